"""The inference stage: batches of frames in, frames with labelled faces out.

Per batch: one detector call for all frames, one classifier call for all faces
of all frames, then the tracker in frame order. Runs on its own thread; ends
by forwarding the capture's end marker, or a :class:`StageError` of its own.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import numpy as np

from stream.capture.thread import put_until_stopped
from stream.infer.classify import EmotionClassifier, crop_faces
from stream.infer.detect import FaceDetector
from stream.records import EndOfStream, Face, Frame, FrameResult, StageError
from stream.track import IouTracker

__all__ = ["InferenceThread", "infer_batch", "take_batch"]

log = logging.getLogger(__name__)

_POLL_S = 0.05


def infer_batch(frames: list[Frame], detector: FaceDetector, classifier: EmotionClassifier,
                tracker: IouTracker | None) -> list[FrameResult]:
    """Detect, classify and track the faces of a batch of frames (two model calls in all)."""
    detections = detector.detect([f.image_bgr for f in frames])
    crops: list[np.ndarray] = []
    for frame, dets in zip(frames, detections, strict=True):
        crops.extend(crop_faces(frame.image_bgr, [d.box_xyxy for d in dets], classifier.contract))
    probs = classifier.classify(np.stack(crops)) if crops else np.zeros((0, len(classifier.labels)), np.float32)
    results = []
    k = 0
    for frame, dets in zip(frames, detections, strict=True):
        faces = [Face(det.box_xyxy, det.score, probs[k + i]) for i, det in enumerate(dets)]
        k += len(dets)
        if tracker is not None:
            tracker.update(faces)
        results.append(FrameResult(frame, faces, time.perf_counter()))
    return results


def take_batch(frames: queue.Queue, batch_size: int, stop: threading.Event, timeout_s: float | None = None
               ) -> tuple[list[Frame], EndOfStream | StageError | None]:
    """Wait for one frame, then take what else the queue already holds, up to ``batch_size``.

    A live source never waits for a batch to fill; a file keeps the queue full anyway.

    Args:
        frames: The capture queue (frames, then one end or error marker).
        batch_size: Most frames to take.
        stop: Give up waiting when it is set.
        timeout_s: Give up waiting for the first frame after this long (None: only on ``stop``).

    Returns:
        The frames taken, and the marker met after them (``EndOfStream("stopped")`` when
        ``stop`` was set first), or None.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        if stop.is_set():
            return [], EndOfStream("stopped")
        try:
            item = frames.get(timeout=_POLL_S)
            break
        except queue.Empty:
            if deadline is not None and time.monotonic() >= deadline:
                return [], None
    batch: list[Frame] = []
    while True:
        if isinstance(item, (EndOfStream, StageError)):
            return batch, item
        batch.append(item)
        if len(batch) >= batch_size:
            return batch, None
        try:
            item = frames.get_nowait()
        except queue.Empty:
            return batch, None


class InferenceThread:
    """Takes up to ``batch_size`` frames at a time from ``frames`` (:func:`take_batch`) and emits
    results in order."""

    def __init__(self, frames: queue.Queue, detector: FaceDetector, classifier: EmotionClassifier,
                 tracker: IouTracker | None, batch_size: int, results_size: int, stop: threading.Event) -> None:
        self.frames = frames
        self.detector = detector
        self.classifier = classifier
        self.tracker = tracker
        self.batch_size = batch_size
        self.stop = stop
        self.results: queue.Queue = queue.Queue(maxsize=results_size)
        self.busy_s = 0.0
        self._thread = threading.Thread(target=self._run, name="inference", daemon=True)

    def start(self) -> InferenceThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        end: EndOfStream | StageError = EndOfStream("stopped")
        try:
            while not self.stop.is_set():
                batch, marker = take_batch(self.frames, self.batch_size, self.stop)
                if batch:
                    t0 = time.perf_counter()
                    results = infer_batch(batch, self.detector, self.classifier, self.tracker)
                    self.busy_s += time.perf_counter() - t0
                    for result in results:
                        if not put_until_stopped(self.results, result, self.stop):
                            return
                if marker is not None:
                    end = marker
                    break
        except BaseException as err:
            end = StageError("inference", err)
        finally:
            if isinstance(end, StageError) or not self.stop.is_set():
                put_until_stopped(self.results, end, self.stop)

    def join(self, timeout_s: float = 5.0) -> None:
        """Wait for the thread after ``stop`` was set, draining its queue so it can finish."""
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            while True:
                try:
                    self.results.get_nowait()
                except queue.Empty:
                    break
            self._thread.join(_POLL_S)
        if self._thread.is_alive():
            log.warning("inference thread did not stop within %.1f s", timeout_s)
