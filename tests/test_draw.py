"""The overlay with many faces: labels never cover another face, compact labels when faces are many or
small, probability panels only where they fit, ``too_small`` shown, no frame rate on a still image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from stream.capture import ImageSource
from stream.labels import TOO_SMALL
from stream.records import Face, Frame, FrameResult
from stream.render.draw import annotate
from stream.sinks.files import SourceOutputs
from stream.summary import RunSummary

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FACE_BGR = (255, 0, 0)


def faces_frame(boxes: list[tuple[int, int, int, int]], w: int = 1280, h: int = 720) -> FrameResult:
    """A black frame whose face boxes are filled with pure blue (nothing else is)."""
    image = np.zeros((h, w, 3), np.uint8)
    faces = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        image[y1:y2, x1:x2] = FACE_BGR
        probs = np.full(len(LABELS), 0.02, np.float32)
        probs[3] = 0.88
        faces.append(Face(np.array([x1, y1, x2, y2], np.float32), 0.9, probs, id=i))
    return FrameResult(Frame("test", 0, 0.0, 0.0, image), faces, 0.0)


def inside_untouched(result: FrameResult, margin: int = 5) -> list[int]:
    """Faces whose inside (the box outline aside) was drawn over."""
    bad = []
    for i, f in enumerate(result.faces):
        x1, y1, x2, y2 = (int(v) for v in f.box_xyxy)
        inner = result.frame.image_bgr[y1 + margin:y2 - margin, x1 + margin:x2 - margin]
        if not (inner == FACE_BGR).all():
            bad.append(i)
    return bad


def test_ten_faces_in_rows_keep_their_faces_uncovered() -> None:
    # Two tight rows of five, as in a group photo: above / below each face is another face or its label.
    boxes = [(60 + 240 * c, 120 + 230 * r, 60 + 240 * c + 110, 120 + 230 * r + 110) for r in range(2) for c in range(5)]
    result = faces_frame(boxes)
    annotate(result, LABELS, bars=True)
    assert inside_untouched(result) == []
    # Compact: ten faces give no probability panels (their dark grey).
    assert not (result.frame.image_bgr == (32, 32, 32)).all(axis=2).any()


def test_a_few_large_faces_get_panels_where_they_fit() -> None:
    result = faces_frame([(100, 200, 400, 500), (800, 200, 1100, 500)])
    annotate(result, LABELS, bars=True)
    assert inside_untouched(result) == []
    assert (result.frame.image_bgr == (32, 32, 32)).all(axis=2).sum() > 1000  # two panels drawn


def test_a_face_filling_the_frame_gets_no_panel_over_itself() -> None:
    result = faces_frame([(10, 40, 630, 470)], w=640, h=480)
    annotate(result, LABELS, bars=True)
    assert not (result.frame.image_bgr == (32, 32, 32)).all(axis=2).any()


def test_too_small_faces_say_so() -> None:
    result = faces_frame([(100, 100, 112, 112)])
    result.faces[0].too_small = True
    plain = result.frame.image_bgr.copy()
    annotate(result, LABELS)
    assert (result.frame.image_bgr != plain).any()
    from stream.render.record import event_record
    assert event_record(result, LABELS)["faces"][0]["label"] == TOO_SMALL


def test_no_frame_rate_on_a_still_image(tmp_path: Path) -> None:
    path = tmp_path / "still.png"
    cv2.imwrite(str(path), np.zeros((480, 640, 3), np.uint8))
    outputs = SourceOutputs(ImageSource(path), RunSummary("still.png"), LABELS, None, None, fps_overlay=True)
    result = faces_frame([], w=640, h=480)
    outputs.write(result, draw=True)
    assert not result.frame.image_bgr[:40, :200].any()
