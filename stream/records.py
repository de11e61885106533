"""The small typed records that flow between the stages.

A :class:`Frame` leaves the capture stage, a :class:`FrameResult` (the frame
plus its :class:`Face` list) leaves the inference stage and reaches the
recorder. Units are in the names: ``box_xyxy`` is in source-frame pixels,
``t_*_s`` in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["EndOfStream", "Face", "Frame", "FrameResult", "StageError"]


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.

    Attributes:
        source: Display name of the source (credentials already removed).
        index: 0-based position in the source (a live source counts every frame it read).
        t_media_s: Presentation time from the container (files) or since the start (live).
        t_capture_s: ``time.perf_counter()`` when the frame was decoded.
        image_bgr: The pixels, HxWx3 uint8 BGR.
        source_id: Position of the source in the pipeline's source list (stable for the run).
        still: A still image (not a video frame): the detector may spend more on it
            (``detector.tiles_above_px`` against ``video_tiles_above_px``).
        prescaled: The frame scaled for the detector, made by the capture thread
            (:meth:`~stream.infer.detect.FaceDetector.prescale`); None: the detector scales it.
    """

    source: str
    index: int
    t_media_s: float
    t_capture_s: float
    image_bgr: np.ndarray
    source_id: int = 0
    still: bool = False
    prescaled: np.ndarray | None = None

    @property
    def size_wh(self) -> tuple[int, int]:
        """Width and height in pixels."""
        return int(self.image_bgr.shape[1]), int(self.image_bgr.shape[0])


@dataclass(slots=True)
class Face:
    """One face found in a frame.

    Attributes:
        box_xyxy: Left, top, right, bottom in source-frame pixels (may extend past the edge).
        score: Detector confidence in [0, 1].
        probs: Emotion probabilities, in the classifier's label order (smoothed if enabled).
        id: Track id, stable across frames (-1 until tracked).
        keypoints_xy: The detector's keypoints in source-frame pixels, ``(K, 2)``, the first three
            the subject's right eye, left eye and nose tip: BlazeFace's six add the mouth and the
            right and left ear, YuNet's five the right and left mouth corner; empty if unknown.
        too_small: The box is shorter than ``classifier.min_face_px``: labelled ``too_small``
            (:func:`stream.labels.face_label`), its probabilities are a guess.
        heads: The classifier's extra outputs by name (``ModelContract.heads``), e.g.
            ``{"valence_arousal": array([v, a])}``; empty for a model without any.
    """

    box_xyxy: np.ndarray
    score: float
    probs: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    id: int = -1
    keypoints_xy: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    too_small: bool = False
    heads: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(slots=True)
class FrameResult:
    """A frame with its faces, after inference.

    Attributes:
        frame: The source frame.
        faces: Faces found, with probabilities and track ids.
        t_done_s: ``time.perf_counter()`` when inference finished.
        event: Its event record, built once by the first output that needs it and shared by
            all (:func:`stream.render.record.frame_event`); None until then.
    """

    frame: Frame
    faces: list[Face]
    t_done_s: float = 0.0
    event: dict[str, Any] | None = None

    @property
    def latency_ms(self) -> float:
        """Capture to result, in milliseconds."""
        return (self.t_done_s - self.frame.t_capture_s) * 1000.0


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """Sent once by a producer after its last item.

    Attributes:
        reason: Why the stream ended (``"eof"``, ``"stopped"``, ``"max_frames"`` ...).
        warning: A problem worth telling the user (a truncated file), or ``""``.
        source_id: The source that ended (None: the whole pipeline).
    """

    reason: str = "eof"
    warning: str = ""
    source_id: int | None = None


@dataclass(frozen=True, slots=True)
class StageError:
    """Sent by a stage whose work raised, so the consumer re-raises it.

    Attributes:
        stage: Name of the stage that failed.
        error: The exception.
        source_id: The one source it concerns (its capture failed; the others go on),
            or None when the whole pipeline must stop.
    """

    stage: str
    error: BaseException
    source_id: int | None = None
