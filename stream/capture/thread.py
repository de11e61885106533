"""The capture stage: a thread that reads a source into a bounded queue.

Two policies share one loop. A file is *lossless*: when the queue is full the
thread waits, so every frame is processed. A live source keeps the *newest*
frames: when the queue is full the oldest frame is dropped (and counted), so the
pipeline never works on stale pixels. Either way the thread ends with exactly
one :class:`EndOfStream` or :class:`StageError` item (:class:`~stream.worker.Worker`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np

from stream.capture.sources import FrameSource
from stream.records import EndOfStream, Frame
from stream.worker import Worker, put_until_stopped

__all__ = ["CaptureThread", "put_until_stopped"]

log = logging.getLogger(__name__)


class CaptureThread(Worker):
    """Reads ``source`` on its own thread into :attr:`frames` (a bounded queue).

    The caller opens a file source (so bad input reaches it directly); a live source may
    come unopened (``open_source(..., defer_live=True)``, ``open_first``): the thread opens it
    first, retrying a camera that is down, so its outage holds up no other source. The
    thread closes the source when it ends.

    Args:
        source: An opened frame source.
        maxsize: Queue size (live sources: how many newest frames are kept).
        stop: Set it to stop capture (the pipeline's, or one per source).
        max_frames: Stop after this many frames (None: no limit).
        source_id: Stamped on every frame and on the end marker.
        on_put: Called after every frame put (the inference stage's wake-up).
        open_first: The source comes unopened: open it on this thread.
        prescale: ``(image, still) -> prescaled``, run on each frame as it is decoded
            (:meth:`~stream.infer.detect.FaceDetector.prescale`: the detector's scaling, done
            here while the frame is in this thread's cache and off the inference thread).
    """

    def __init__(self, source: FrameSource, maxsize: int, stop: threading.Event, max_frames: int | None = None,
                 *, source_id: int = 0, on_put: Callable[[], None] | None = None, open_first: bool = False,
                 prescale: Callable[[np.ndarray, bool], np.ndarray | None] | None = None) -> None:
        super().__init__(f"capture-{source_id}", maxsize, stop, source_id=source_id, on_put=on_put)
        self.source = source
        self.open_first = open_first
        self.prescale = prescale
        self.still = not source.live and source.frame_count == 1  # a still image
        self.max_frames = max_frames
        self.captured = 0
        self.dropped = 0

    @property
    def frames(self) -> queue.Queue:
        return self.out

    def produce(self) -> EndOfStream:
        if self.open_first:
            self.source.open()
        while not self.stop.is_set():
            if self.max_frames is not None and self.captured >= self.max_frames:
                return EndOfStream("max_frames", source_id=self.source_id)
            item = self.source.read()
            if item is None:
                return EndOfStream("eof", warning=self.source.warning, source_id=self.source_id)
            image, t_media_s = item
            frame = Frame(self.source.name, self.captured, t_media_s, time.perf_counter(), image,
                          self.source_id or 0, still=self.still,
                          prescaled=self.prescale(image, self.still) if self.prescale is not None else None)
            self.captured += 1
            if self.source.live:
                self._put_newest(frame)
            elif not self.emit(frame):
                break
        return EndOfStream("stopped", source_id=self.source_id)

    def cleanup(self) -> None:
        self.source.close()

    def interrupt(self) -> None:
        # A live source may be blocked in read() (reconnect backoff): let it return now.
        interrupt = getattr(self.source, "interrupt", None)
        if callable(interrupt):
            interrupt()

    def _put_newest(self, frame: Frame) -> None:
        while True:
            try:
                self.out.put_nowait(frame)
                self._notify()
                return
            except queue.Full:
                try:
                    self.out.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass
