"""Drawing faces, labels, probability bars and the FPS overlay onto frames."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from stream.labels import UNCERTAIN, face_label
from stream.records import FrameResult

__all__ = ["LABEL_COLORS_BGR", "annotate"]

#: A fixed colour per common emotion name; other labels get a colour from their name.
LABEL_COLORS_BGR = {
    "angry": (40, 40, 230),
    "disgust": (40, 140, 40),
    "fear": (160, 60, 160),
    "happy": (40, 210, 250),
    "sad": (200, 120, 40),
    "surprise": (230, 200, 40),
    "neutral": (190, 190, 190),
    "contempt": (60, 100, 160),
    UNCERTAIN: (110, 110, 110),
}

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _color(label: str) -> tuple[int, int, int]:
    if label in LABEL_COLORS_BGR:
        return LABEL_COLORS_BGR[label]
    h = sum(map(ord, label)) * 2654435761 % 0xFFFFFF
    return (h & 0xFF, (h >> 8) & 0xFF, (h >> 16) & 0xFF)


def annotate(result: FrameResult, labels: Sequence[str], *, bars: bool = True, status: str = "",
             uncertain_below: float = 0.0) -> np.ndarray:
    """Draw every face of ``result`` onto its frame (in place) and return the image.

    Args:
        result: The frame and its faces.
        labels: Class names in the classifier's order.
        bars: Also draw per-class probability bars beside each face.
        status: Text for the top-left corner (FPS, latency), or "" for none.
        uncertain_below: Faces whose top probability is below this are labelled ``uncertain``
            (:func:`stream.labels.face_label`; the bars still show every class).
    """
    image = result.frame.image_bgr
    h, w = image.shape[:2]
    thickness = max(1, round(min(w, h) / 320))
    font_scale = max(0.4, min(w, h) / 900)
    for face in result.faces:
        x1, y1, x2, y2 = (round(float(v)) for v in face.box_xyxy)
        top = int(np.argmax(face.probs)) if face.probs.size else -1
        label = face_label(face.probs, labels, uncertain_below) if top >= 0 else "face"
        color = _color(label)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness + 1, cv2.LINE_AA)
        if top < 0:
            text = f"#{face.id}"
        elif label == UNCERTAIN:
            text = f"#{face.id} {UNCERTAIN} ({labels[top]} {face.probs[top]:.0%})"
        else:
            text = f"#{face.id} {label} {face.probs[top]:.0%}"
        (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, thickness)
        ty = y1 - 4 if y1 - th - base - 4 > 0 else min(h - 1, y2 + th + 4)
        cv2.rectangle(image, (x1, ty - th - base), (x1 + tw + 4, ty + base - 2), color, -1)
        cv2.putText(image, text, (x1 + 2, ty - 2), _FONT, font_scale, (0, 0, 0), thickness, cv2.LINE_AA)
        if bars and face.probs.size:
            _draw_bars(image, face.probs, labels, (x2 + 4, max(0, y1)), font_scale * 0.7, thickness)
    if status:
        # One thin line of text on a dark box: an outlined, anti-aliased text cost 0.3 ms a frame.
        (tw, th), base = cv2.getTextSize(status, _FONT, font_scale, 1)
        cv2.rectangle(image, (0, 0), (tw + 12, th + base + 10), (32, 32, 32), -1)
        cv2.putText(image, status, (6, th + 5), _FONT, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def _draw_bars(image: np.ndarray, probs: np.ndarray, labels: Sequence[str], origin: tuple[int, int],
               font_scale: float, thickness: int) -> None:
    """A compact panel: one row per class, name then a bar as long as its probability."""
    h, w = image.shape[:2]
    text_w = max(cv2.getTextSize(label[:8], _FONT, font_scale, 1)[0][0] for label in labels)
    text_h = cv2.getTextSize("Ag", _FONT, font_scale, 1)[0][1]
    row, bar_w = text_h + 6, max(30, text_w)
    panel_w, panel_h = text_w + bar_w + 12, row * len(labels) + 4
    x, y = origin
    if x + panel_w > w:  # no room right of the face: put the panel left of the frame edge instead
        x = max(0, w - panel_w)
    y = min(y, max(0, h - panel_h))
    cv2.rectangle(image, (x, y), (x + panel_w, y + panel_h), (32, 32, 32), -1)
    for i, (label, p) in enumerate(zip(labels, probs, strict=False)):
        top = y + 2 + i * row
        cv2.putText(image, label[:8], (x + 4, top + text_h + 2), _FONT, font_scale, (235, 235, 235), 1, cv2.LINE_AA)
        bx = x + text_w + 8
        cv2.rectangle(image, (bx, top + 3), (bx + max(1, int(bar_w * float(p))), top + row - 2), _color(label), -1)
