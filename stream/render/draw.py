"""Drawing faces, labels, probability bars and the FPS overlay onto frames."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

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
}

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _color(label: str) -> tuple[int, int, int]:
    if label in LABEL_COLORS_BGR:
        return LABEL_COLORS_BGR[label]
    h = sum(map(ord, label)) * 2654435761 % 0xFFFFFF
    return (h & 0xFF, (h >> 8) & 0xFF, (h >> 16) & 0xFF)


def annotate(result: FrameResult, labels: Sequence[str], *, bars: bool = True, status: str = "") -> np.ndarray:
    """Draw every face of ``result`` onto its frame (in place) and return the image.

    Args:
        result: The frame and its faces.
        labels: Class names in the classifier's order.
        bars: Also draw per-class probability bars beside each face.
        status: Text for the top-left corner (FPS, latency), or "" for none.
    """
    image = result.frame.image_bgr
    h, w = image.shape[:2]
    thickness = max(1, round(min(w, h) / 320))
    font_scale = max(0.4, min(w, h) / 900)
    for face in result.faces:
        x1, y1, x2, y2 = (int(round(v)) for v in face.box_xyxy)
        top = int(np.argmax(face.probs)) if face.probs.size else -1
        label = labels[top] if top >= 0 else "face"
        color = _color(label)
        cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness + 1, cv2.LINE_AA)
        text = f"#{face.id} {label} {face.probs[top]:.0%}" if top >= 0 else f"#{face.id}"
        (tw, th), base = cv2.getTextSize(text, _FONT, font_scale, thickness)
        ty = y1 - 4 if y1 - th - base - 4 > 0 else min(h - 1, y2 + th + 4)
        cv2.rectangle(image, (x1, ty - th - base), (x1 + tw + 4, ty + base - 2), color, -1)
        cv2.putText(image, text, (x1 + 2, ty - 2), _FONT, font_scale, (0, 0, 0), thickness, cv2.LINE_AA)
        if bars and face.probs.size:
            _draw_bars(image, face.probs, labels, (x2 + 4, max(0, y1)), font_scale * 0.8, thickness)
    if status:
        cv2.putText(image, status, (8, int(24 * font_scale / 0.5)), _FONT, font_scale, (0, 0, 0), thickness + 2,
                    cv2.LINE_AA)
        cv2.putText(image, status, (8, int(24 * font_scale / 0.5)), _FONT, font_scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
    return image


def _draw_bars(image: np.ndarray, probs: np.ndarray, labels: Sequence[str], origin: tuple[int, int],
               font_scale: float, thickness: int) -> None:
    h, w = image.shape[:2]
    row = max(10, int(22 * font_scale / 0.5))
    width = max(40, int(80 * font_scale / 0.5))
    x, y = origin
    if x + width + 60 > w:  # no room on the right of the face: draw on the left edge instead
        x = 4
    for i, (label, p) in enumerate(zip(labels, probs, strict=False)):
        yy = y + i * row
        if yy + row > h:
            break
        cv2.rectangle(image, (x, yy + 2), (x + int(width * float(p)), yy + row - 2), _color(label), -1)
        cv2.putText(image, f"{label[:8]}", (x + width + 4, yy + row - 4), _FONT, font_scale * 0.8,
                    (255, 255, 255), max(1, thickness - 1), cv2.LINE_AA)
