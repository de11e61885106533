"""Writers of the outputs: the annotated video or image, and the JSON Lines event log.

Each is a context manager whose ``close`` is idempotent, so the pipeline's
``finally`` leaves a playable video and a complete log whatever happened.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from stream.errors import OutputError
from stream.labels import face_label
from stream.records import FrameResult

__all__ = ["EventLog", "ImageWriter", "VideoRecorder", "check_writable", "event_record"]

log = logging.getLogger(__name__)


def check_writable(path: Path, what: str) -> Path:
    """Create the parent folder and check that ``path`` can be written, before any work starts.

    Raises:
        OutputError: The folder cannot be created or written, or ``path`` is a folder.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} '{path}' could not be written: it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{what} '{path}' could not be written: {err.strerror or err}") from err
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{what} '{path}' could not be written: permission denied")
    return path


class VideoRecorder:
    """An mp4 (or any container OpenCV knows) at the source's size and frame rate."""

    def __init__(self, path: Path, size_wh: tuple[int, int], fps: float, codec: str = "mp4v") -> None:
        self.path = check_writable(path, "output video")
        self.size_wh = size_wh
        self.frames = 0
        self._writer: cv2.VideoWriter | None = cv2.VideoWriter(
            str(self.path), cv2.VideoWriter.fourcc(*codec), fps, size_wh
        )
        if not self._writer.isOpened():
            self._writer = None
            raise OutputError(f"output video '{path}' could not be written: codec {codec!r} or container "
                              f"'{self.path.suffix}' not supported by OpenCV")

    def write(self, image_bgr: np.ndarray) -> None:
        if self._writer is None:
            raise OutputError(f"output video '{self.path}' written after close")
        if (image_bgr.shape[1], image_bgr.shape[0]) != self.size_wh:
            # A live source may change resolution after a reconnect; keep the file consistent.
            image_bgr = cv2.resize(image_bgr, self.size_wh)
        self._writer.write(image_bgr)
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def __enter__(self) -> VideoRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ImageWriter:
    """The annotated still image (image mode)."""

    def __init__(self, path: Path) -> None:
        self.path = check_writable(path, "output image")
        if not cv2.haveImageWriter(str(self.path)):
            raise OutputError(f"output image '{path}': OpenCV cannot write '{self.path.suffix}' files")
        self.frames = 0

    def write(self, image_bgr: np.ndarray) -> None:
        if not cv2.imwrite(str(self.path), image_bgr):
            raise OutputError(f"output image '{self.path}' could not be written")
        self.frames += 1

    def close(self) -> None:
        pass

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def event_record(result: FrameResult, labels: Sequence[str], *, uncertain_below: float = 0.0) -> dict:
    """The event-log line of one frame (boxes in source pixels).

    A face's ``label`` is :func:`stream.labels.face_label`'s: ``uncertain`` when its
    top probability is below ``uncertain_below``; its ``probs`` are always all there.
    """
    faces = []
    for face in result.faces:
        faces.append({
            "id": face.id,
            "box_xyxy": [round(float(v), 1) for v in face.box_xyxy],
            "score": round(face.score, 4),
            "label": face_label(face.probs, labels, uncertain_below),
            "probs": {label: round(float(p), 4) for label, p in zip(labels, face.probs, strict=True)},
        })
    return {
        "source": result.frame.source,
        "frame": result.frame.index,
        "t": round(result.frame.t_media_s, 4),
        "latency_ms": round(result.latency_ms, 2),
        "faces": faces,
    }


class EventLog:
    """JSON Lines, one line per processed frame, in order; flushed so a crash loses little."""

    def __init__(self, path: Path) -> None:
        self.path = check_writable(path, "event log")
        self.lines = 0
        try:
            self._file: IO[str] | None = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as err:
            raise OutputError(f"event log '{path}' could not be written: {err.strerror or err}") from err

    def write_record(self, record: dict) -> None:
        if self._file is None:
            raise OutputError(f"event log '{self.path}' written after close")
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.lines += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
