"""Drawing faces, labels, probability bars and the FPS overlay onto frames.

With many faces the labels must not hide the faces: every label (and probability panel) is
placed at the first of a few spots around its face (above, below, inside the top of the box,
left, right) that covers no face box and no label placed before it; the larger faces are
placed first. Labels go compact (no id, smaller text) when the faces are many or small, and
the probability panel is drawn only where it fits without covering a face. Text is scaled
to the frame.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import cv2
import numpy as np

from stream.labels import TOO_SMALL, UNCERTAIN, face_label
from stream.records import Face, FrameResult

__all__ = ["COMPACT_ABOVE", "LABEL_COLORS_BGR", "annotate"]

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
    TOO_SMALL: (150, 150, 150),
}

#: More faces than this in a frame: compact labels (label and score only, smaller text).
COMPACT_ABOVE = 6

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
        bars: Also draw per-class probability bars beside each face (where they fit).
        status: Text for the top-left corner (FPS, latency), or "" for none.
        uncertain_below: Faces whose top probability is below this are labelled ``uncertain``
            (:func:`stream.labels.face_label`; the bars still show every class).
    """
    image = result.frame.image_bgr
    h, w = image.shape[:2]
    thickness = max(1, round(min(w, h) / 320))
    font_scale = max(0.4, min(w, h) / 900)
    faces = result.faces
    status_box = None
    if status:
        (tw, th), base = cv2.getTextSize(status, _FONT, font_scale, 1)
        status_box = (0, 0, tw + 12, th + base + 10)
    boxes = np.array([[round(float(v)) for v in f.box_xyxy] for f in faces], np.int64).reshape(-1, 4)
    for face, (x1, y1, x2, y2) in zip(faces, boxes.tolist(), strict=True):
        cv2.rectangle(image, (x1, y1), (x2, y2), _color(_label(face, labels, uncertain_below)), thickness + 1,
                      cv2.LINE_AA)
    # Nothing may cover a face; labels placed later avoid the ones placed before.
    taken = [tuple(b) for b in boxes.tolist()] + ([status_box] if status_box else [])
    many = len(faces) > COMPACT_ABOVE
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
    for k in order.tolist():
        face, box = faces[k], tuple(boxes[k].tolist())
        label = _label(face, labels, uncertain_below)
        top = int(np.argmax(face.probs)) if face.probs.size else -1
        small = box[3] - box[1] < 0.08 * min(w, h)
        compact = many or small
        scale = font_scale * (0.75 if compact else 1.0)
        text = _text(face, label, labels, top, compact)
        (tw, th), base = cv2.getTextSize(text, _FONT, scale, thickness)
        rect = _place((tw + 4, th + base + 2), box, k, taken, (w, h))
        assert rect is not None
        taken.append(rect)
        color = _color(label)
        cv2.rectangle(image, rect[:2], rect[2:], color, -1)
        cv2.putText(image, text, (rect[0] + 2, rect[3] - base - 1), _FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
        if bars and not compact and face.probs.size and label != TOO_SMALL:
            size = _bars_size(labels, font_scale * 0.7)
            spot = _place(size, box, k, taken, (w, h), sides_only=True, strict=True)
            if spot is not None:
                taken.append(spot)
                _draw_bars(image, face.probs, labels, spot[:2], font_scale * 0.7)
    if status_box:
        # One thin line of text on a dark box: an outlined, anti-aliased text cost 0.3 ms a frame.
        th = cv2.getTextSize(status, _FONT, font_scale, 1)[0][1]
        cv2.rectangle(image, status_box[:2], status_box[2:], (32, 32, 32), -1)
        cv2.putText(image, status, (6, th + 5), _FONT, font_scale, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def _label(face: Face, labels: Sequence[str], uncertain_below: float) -> str:
    if not face.probs.size:
        return "face"
    return face_label(face.probs, labels, uncertain_below, too_small=face.too_small)


def _text(face: Face, label: str, labels: Sequence[str], top: int, compact: bool) -> str:
    ident = "" if compact or face.id < 0 else f"#{face.id} "
    if top < 0:
        return f"#{face.id}"
    if label == TOO_SMALL:
        return f"{ident}{TOO_SMALL}"
    if label == UNCERTAIN:
        return f"{ident}?" if compact else f"{ident}{UNCERTAIN} ({labels[top]} {face.probs[top]:.0%})"
    return f"{ident}{label} {face.probs[top]:.0%}"


def _place(size: tuple[int, int], box: tuple[int, ...], own: int, taken: list[tuple[int, ...]],
           frame_wh: tuple[int, int], *, sides_only: bool = False, strict: bool = False
           ) -> tuple[int, int, int, int] | None:
    """The first spot of ``size`` around ``box`` inside the frame that overlaps nothing in ``taken``
    (its own face box, ``taken[own]``, excepted for spots inside it); else the least covering one
    (``strict``: None)."""
    (sw, sh), (fw, fh) = size, frame_wh
    x1, y1, x2, y2 = box
    spots = [] if sides_only else [(x1, y1 - sh), (x1, y2), (x1, y1)]  # above, below, inside the top
    spots += [(x2 + 2, y1), (x1 - sw - 2, y1), (x2 + 2, y2 - sh), (x1 - sw - 2, y2 - sh)]  # right, left
    occupied = np.array(taken, np.int64).reshape(-1, 4)
    best, best_cover = None, None
    for i, (sx, sy) in enumerate(spots):
        sx, sy = min(max(0, sx), max(0, fw - sw)), min(max(0, sy), max(0, fh - sh))
        rect = (sx, sy, sx + sw, sy + sh)
        ix = np.maximum(np.minimum(rect[2], occupied[:, 2]) - np.maximum(rect[0], occupied[:, 0]), 0)
        iy = np.maximum(np.minimum(rect[3], occupied[:, 3]) - np.maximum(rect[1], occupied[:, 1]), 0)
        cover = ix * iy
        if not sides_only and i == 2:
            cover[own] = 0  # inside the top of its own box: covers only its own forehead
        total = int(cover.sum())
        if total == 0:
            return rect
        if best_cover is None or total < best_cover:
            best, best_cover = rect, total
    return None if strict else best


def _bars_size(labels: Sequence[str], font_scale: float) -> tuple[int, int]:
    return _bars_layout(tuple(labels), font_scale)[3:]


@functools.lru_cache(maxsize=32)
def _bars_layout(labels: tuple[str, ...], font_scale: float) -> tuple[int, int, int, int, int]:
    """The probability panel's text width, text height, row height, panel width and height."""
    text_w = max(cv2.getTextSize(label[:8], _FONT, font_scale, 1)[0][0] for label in labels)
    text_h = cv2.getTextSize("Ag", _FONT, font_scale, 1)[0][1]
    return text_w, text_h, text_h + 6, text_w + max(30, text_w) + 12, (text_h + 6) * len(labels) + 4


@functools.lru_cache(maxsize=32)
def _bars_panel(labels: tuple[str, ...], font_scale: float) -> np.ndarray:
    """The panel without its bars: a dark box with the class names, drawn once and pasted per face
    (the same pixels as drawing it: the box is opaque, the names lie inside it)."""
    _, text_h, row, panel_w, panel_h = _bars_layout(labels, font_scale)
    panel = np.empty((panel_h + 1, panel_w + 1, 3), np.uint8)
    panel[:] = (32, 32, 32)
    for i, label in enumerate(labels):
        cv2.putText(panel, label[:8], (4, 2 + i * row + text_h + 2), _FONT, font_scale, (235, 235, 235), 1,
                    cv2.LINE_AA)
    panel.flags.writeable = False
    return panel


def _draw_bars(image: np.ndarray, probs: np.ndarray, labels: Sequence[str], origin: tuple[int, int],
               font_scale: float) -> None:
    """A compact panel at ``origin``: one row per class, name then a bar as long as its probability."""
    key = tuple(labels)
    text_w, _, row, _, _ = _bars_layout(key, font_scale)
    bar_w = max(30, text_w)
    panel = _bars_panel(key, font_scale)
    x, y = origin
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + panel.shape[1], w), min(y + panel.shape[0], h)
    if x0 < x1 and y0 < y1:
        image[y0:y1, x0:x1] = panel[y0 - y:y1 - y, x0 - x:x1 - x]
    for i, (label, p) in enumerate(zip(labels, probs.tolist(), strict=False)):
        top = y + 2 + i * row
        bx = x + text_w + 8
        cv2.rectangle(image, (bx, top + 3), (bx + max(1, int(bar_w * p)), top + row - 2), _color(label), -1)
