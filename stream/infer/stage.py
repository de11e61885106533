"""The inference stage: frames of every source in, frames with labelled faces out.

:class:`Mux` takes fair batches from the sources' capture queues (round robin,
one frame per source per round, flushed when full or when nothing more is
waiting). Per batch: one detector call for all frames, one classifier call for
all faces of all frames (:func:`analyse_batch`); then each source's own tracker,
in frame order (:func:`track_batch`). Several batches are analysed at once on a
small pool of threads sharing the sessions (``workers``: an ONNX Runtime call
releases the GIL, so one batch's model runs while another's Python work does);
their results are tracked and emitted strictly in the order the batches were taken.
Results leave in one queue, each frame carrying its ``source_id``; a source's
end or failure is forwarded as its :class:`EndOfStream` / :class:`StageError`
(with that ``source_id``) and the other sources go on. The stage ends with an
:class:`EndOfStream` of its own (``source_id`` None) once every source ended.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from stream.infer.classify import EmotionClassifier, crop_faces, eye_roll_deg
from stream.infer.detect import Detection, FaceDetector
from stream.records import EndOfStream, Face, Frame, FrameResult, StageError
from stream.track import IouTracker
from stream.worker import Worker

__all__ = ["InferenceThread", "Mux", "analyse_batch", "infer_batch", "take_batch", "track_batch"]

log = logging.getLogger(__name__)

_POLL_S = 0.05

Marker = EndOfStream | StageError


class Mux:
    """Fair batches from several sources' queues (see the module docstring).

    Args:
        queues: One capture queue per source, indexed by ``source_id``.
        batch_size: Most frames per batch.
        timeout_s: After the first frame, wait this long for more before flushing (0: never wait).
        ready: Set by the producers after each put (their ``on_put``); without it the mux polls.
    """

    def __init__(self, queues: Sequence[queue.Queue], batch_size: int, timeout_s: float = 0.0,
                 ready: threading.Event | None = None) -> None:
        self.queues = list(queues)
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.active = set(range(len(self.queues)))
        self.ready = ready or threading.Event()
        self._next = 0
        self._changes: queue.SimpleQueue[tuple[int, queue.Queue | None]] = queue.SimpleQueue()

    def add(self, source_id: int, frames: queue.Queue) -> None:
        """A source joins (from any thread; it takes effect at the next :meth:`take`).

        ``source_id`` must be the next free one (the pipeline numbers its sources in order).
        """
        self._changes.put((source_id, frames))
        self.ready.set()

    def retire(self, source_id: int) -> None:
        """A source leaves without its end marker (it was removed), from any thread."""
        self._changes.put((source_id, None))
        self.ready.set()

    @property
    def changing(self) -> bool:
        """Whether added or retired sources wait to be taken into account."""
        return not self._changes.empty()

    def _apply_changes(self) -> None:
        while not self._changes.empty():
            source_id, frames = self._changes.get_nowait()
            if frames is None:
                self.active.discard(source_id)
                continue
            if source_id != len(self.queues):
                raise ValueError(f"source {source_id} added out of order (next is {len(self.queues)})")
            self.queues.append(frames)
            self.active.add(source_id)

    def take(self, stop: threading.Event, wait_s: float | None = None,
             until: Callable[[], bool] | None = None) -> tuple[list[Frame], list[Marker]]:
        """Wait for at least one frame or marker, then fill a batch round robin.

        Args:
            stop: Give up waiting when it is set.
            wait_s: Give up waiting for the first frame or marker after this long (None: only on ``stop``).
            until: Give up waiting for the first frame or marker once this is true (checked when
                :attr:`ready` is set: whoever makes it true sets :attr:`ready` too).

        Returns:
            The frames, and the markers of the sources that ended (those sources are
            no longer active). Both empty when ``stop`` was set, ``wait_s`` passed or no
            source is active.
        """
        frames: list[Frame] = []
        markers: list[Marker] = []
        deadline: float | None = None
        give_up = None if wait_s is None else time.monotonic() + wait_s
        self._apply_changes()
        if not self.active and not stop.is_set():
            # Nothing to read (a pipeline kept open for sources added later): wait for one to join.
            self.ready.wait(_POLL_S if wait_s is None else min(wait_s, _POLL_S))
            self.ready.clear()
        while self.active and not stop.is_set():
            self._apply_changes()
            self.ready.clear()  # before scanning: a put after the scan sets it again
            took = self._round(frames, markers)
            while took and len(frames) < self.batch_size:
                took = self._round(frames, markers)
            if len(frames) >= self.batch_size or (markers and not frames):
                break
            if frames:
                if deadline is None:
                    deadline = time.monotonic() + self.timeout_s
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                self.ready.wait(min(wait, _POLL_S))
            else:
                left = _POLL_S if give_up is None else give_up - time.monotonic()
                if left <= 0 or (until is not None and until()):
                    break
                self.ready.wait(min(left, _POLL_S))
        return frames, markers

    def _round(self, frames: list[Frame], markers: list[Marker]) -> bool:
        """One frame (or end marker) from each active source, starting after the last served."""
        n = len(self.queues)
        took = False
        for k in range(n):
            if len(frames) >= self.batch_size:
                break
            source_id = (self._next + k) % n
            if source_id not in self.active:
                continue
            try:
                item = self.queues[source_id].get_nowait()
            except queue.Empty:
                continue
            took = True
            if isinstance(item, (EndOfStream, StageError)):
                self.active.discard(source_id)
                markers.append(item)
            else:
                frames.append(item)
        self._next = (self._next + 1) % max(n, 1)
        return took


def take_batch(frames: queue.Queue, batch_size: int, stop: threading.Event, timeout_s: float | None = None
               ) -> tuple[list[Frame], EndOfStream | StageError | None]:
    """One source's batch: wait for a frame, then take what else the queue holds, up to ``batch_size``.

    Args:
        frames: The capture queue (frames, then one end or error marker).
        batch_size: Most frames to take.
        stop: Give up waiting when it is set.
        timeout_s: Give up waiting for the first frame after this long (None: only on ``stop``).

    Returns:
        The frames taken, and the marker met after them (``EndOfStream("stopped")`` when
        ``stop`` was set first), or None.
    """
    if stop.is_set():
        return [], EndOfStream("stopped")
    got, markers = Mux([frames], batch_size).take(stop, wait_s=timeout_s)
    if not got and not markers and stop.is_set():
        return [], EndOfStream("stopped")
    return got, markers[0] if markers else None


def infer_batch(frames: list[Frame], detector: FaceDetector, classifier: EmotionClassifier,
                tracker: IouTracker | Callable[[int], IouTracker | None] | None,
                detections: list[list[Detection]] | None = None) -> list[FrameResult]:
    """Detect, classify and track the faces of a batch of frames (two model calls in all).

    Args:
        frames: Frames of one or many sources.
        detector: The face detector.
        classifier: The emotion classifier.
        tracker: One tracker for all frames, or ``source_id -> tracker`` (None: no tracking).
        detections: Each frame's faces when already known (frame skipping); None: detect them here.
    """
    return track_batch(frames, analyse_batch(frames, detector, classifier, detections), tracker)


def analyse_batch(frames: list[Frame], detector: FaceDetector, classifier: EmotionClassifier,
                  detections: list[list[Detection]] | None = None) -> list[list[Face]]:
    """Each frame's faces, classified, untracked: one detector call and one classifier call in all.

    Safe to run on several threads at once (the sessions are shared; nothing else is).
    """
    found = detector.detect([f.image_bgr for f in frames], [f.still for f in frames], [f.source_id for f in frames],
                            [f.prescaled for f in frames]) if detections is None else detections
    crops: list[np.ndarray] = []
    for frame, dets in zip(frames, found, strict=True):
        rolls = [eye_roll_deg(d.keypoints_xy) for d in dets] if classifier.align == "eyes" else None
        crops.extend(crop_faces(frame.image_bgr, [d.box_xyxy for d in dets], classifier.contract, rolls))
    probs, heads = classifier.predict(np.stack(crops) if crops else np.zeros((0, 1, 1), np.uint8))
    out: list[list[Face]] = []
    k = 0
    for dets in found:
        out.append([Face(det.box_xyxy, det.score, probs[k + i], keypoints_xy=det.keypoints_xy,
                         too_small=bool(det.box_xyxy[3] - det.box_xyxy[1] < classifier.min_face_px),
                         heads={name: values[k + i] for name, values in heads.items()})
                    for i, det in enumerate(dets)])
        k += len(dets)
    return out


def track_batch(frames: list[Frame], faces: list[list[Face]],
                tracker: IouTracker | Callable[[int], IouTracker | None] | None) -> list[FrameResult]:
    """Give the faces of a batch their track ids (each source's tracker, in frame order); the results."""
    results = []
    for frame, frame_faces in zip(frames, faces, strict=True):
        track = tracker(frame.source_id) if callable(tracker) else tracker
        if track is not None:
            track.update(frame_faces)
        results.append(FrameResult(frame, frame_faces, time.perf_counter()))
    return results


class InferenceThread(Worker):
    """Runs :func:`infer_batch` on the :class:`Mux`'s batches and emits results in capture order per source.

    Args:
        frames: One capture queue per source (or a single queue: one source).
        detector: The face detector.
        classifier: The emotion classifier.
        tracker: A tracker per source (``source_id -> tracker``), one tracker, or None.
        batch_size: Most frames per batch.
        results_size: Size of :attr:`results`.
        stop: The pipeline's stop event.
        batch_timeout_s: See :class:`Mux`.
        detect_every: Detect faces on every k-th frame of a source; in between, the last
            boxes are classified again and tracked.
        ready: The producers' wake-up event (see :class:`Mux`).
        keep_open: Keep running when every source has ended (sources are added later, :meth:`Mux.add`).
        workers: Batches analysed at once (threads sharing the sessions); results keep the order
            the batches were taken in. With ``detect_every`` > 1 batches are analysed one by one
            (each reuses the detections of the one before).
    """

    def __init__(self, frames: queue.Queue | Sequence[queue.Queue], detector: FaceDetector,
                 classifier: EmotionClassifier, tracker: IouTracker | Callable[[int], IouTracker | None] | None,
                 batch_size: int, results_size: int, stop: threading.Event, *, batch_timeout_s: float = 0.0,
                 detect_every: int = 1, ready: threading.Event | None = None, keep_open: bool = False,
                 workers: int = 1) -> None:
        super().__init__("inference", results_size, stop)
        queues = [frames] if isinstance(frames, queue.Queue) else list(frames)
        self.mux = Mux(queues, batch_size, batch_timeout_s, ready)
        self.detector = detector
        self.classifier = classifier
        self.tracker = tracker
        self.detect_every = detect_every
        self.keep_open = keep_open
        self.workers = max(1, workers) if detect_every <= 1 else 1
        self.busy_s = 0.0
        self._last: dict[int, tuple[int, list[Detection] | int]] = {}

    @property
    def results(self) -> queue.Queue:
        return self.out

    def produce(self) -> EndOfStream:
        if self.workers == 1:
            return self._one_at_a_time()
        # Batches taken, oldest first: (frames, their analysis) or (end markers, None). A batch's
        # results are tracked and emitted only when every batch taken before it has been.
        pending: deque[tuple[list[Frame], Future[list[list[Face]]]] | tuple[list[Marker], None]] = deque()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="inference-worker") as pool:
            while not self.stop.is_set():
                if pending and (pending[0][1] is None or pending[0][1].done() or len(pending) >= self.workers):
                    if not self._emit(pending.popleft()):
                        return EndOfStream("stopped")
                    continue
                oldest = pending[0][1] if pending else None
                batch, markers = self.mux.take(self.stop, until=oldest.done if oldest is not None else None)
                if batch:
                    analysis = pool.submit(self._analyse, batch)
                    analysis.add_done_callback(lambda _: self.mux.ready.set())  # wakes take() for its results
                    pending.append((batch, analysis))
                if markers:
                    pending.append((markers, None))
                if not pending and not self.mux.active and not self.mux.changing and not self.keep_open:
                    return EndOfStream("eof")
            for _, waiting in pending:  # stopped: nothing more is emitted
                if waiting is not None:
                    waiting.cancel()
        return EndOfStream("stopped")

    def _one_at_a_time(self) -> EndOfStream:
        """One worker: each batch analysed, tracked and emitted on this thread (no hand-off)."""
        while not self.stop.is_set():
            batch, markers = self.mux.take(self.stop)
            if batch and not all(self.emit(r) for r in track_batch(batch, self._analyse(batch), self.tracker)):
                return EndOfStream("stopped")
            if not all(self.emit(marker) for marker in markers):
                return EndOfStream("stopped")
            if not self.mux.active and not self.mux.changing and not self.keep_open:
                return EndOfStream("eof")
        return EndOfStream("stopped")

    def _analyse(self, batch: list[Frame]) -> list[list[Face]]:
        t0 = time.perf_counter()
        faces = analyse_batch(batch, self.detector, self.classifier, self._reuse(batch))
        self.busy_s += time.perf_counter() - t0
        return faces

    def _emit(self, item: tuple[list[Frame], Future[list[list[Face]]]] | tuple[list[Marker], None]) -> bool:
        """Track and emit a batch's results (waiting for its analysis), or forward end markers."""
        frames, analysis = item
        if analysis is None:
            return all(self.emit(marker) for marker in frames)
        while True:
            try:
                faces = analysis.result(timeout=_POLL_S)  # an error of the analysis is raised here
                break
            except TimeoutError:
                if self.stop.is_set():
                    return False
        return all(self.emit(result) for result in track_batch(frames, faces, self.tracker))  # type: ignore[arg-type]

    def _reuse(self, batch: list[Frame]) -> list[list[Detection]] | None:
        """With ``detect_every`` k > 1: each frame's detections, fresh for every k-th frame of a
        source and reused from that frame for the k - 1 after it (None: detect every frame)."""
        if self.detect_every <= 1:
            return None
        todo: list[int] = []
        plan: list[list[Detection] | int] = []  # known detections, or a position in ``todo``
        for i, frame in enumerate(batch):
            seen, ref = self._last.get(frame.source_id, (-1, []))
            if seen < 0 or frame.index - seen >= self.detect_every:
                ref = len(todo)
                todo.append(i)
                self._last[frame.source_id] = (frame.index, ref)
            plan.append(ref)
        found = self.detector.detect([batch[i].image_bgr for i in todo], [batch[i].still for i in todo],
                                     [batch[i].source_id for i in todo], [batch[i].prescaled for i in todo]
                                     ) if todo else []
        for source_id, (seen, ref) in self._last.items():
            if isinstance(ref, int):
                self._last[source_id] = (seen, found[ref])
        return [found[ref] if isinstance(ref, int) else ref for ref in plan]

    def join(self, timeout_s: float = 5.0) -> None:
        """Wait for the thread after ``stop`` was set, draining its queue so it can finish."""
        self.close(timeout_s)
