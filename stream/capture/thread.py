"""The capture stage: a thread that reads a source into a bounded queue.

Two policies share one loop. A file is *lossless*: when the queue is full the
thread waits, so every frame is processed. A live source keeps the *newest*
frames: when the queue is full the oldest frame is dropped (and counted), so the
pipeline never works on stale pixels. Either way the thread ends with exactly
one :class:`EndOfStream` or :class:`StageError` item, sent from ``finally``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from stream.capture.sources import FrameSource
from stream.records import EndOfStream, Frame, StageError

__all__ = ["CaptureThread", "put_until_stopped"]

log = logging.getLogger(__name__)

_POLL_S = 0.05


def put_until_stopped(q: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item``, waiting for room until ``stop`` is set. Returns False if stopped first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


class CaptureThread:
    """Reads ``source`` on its own thread into ``frames`` (a bounded queue).

    The thread opens nothing: the caller opens the source (so open errors reach
    it directly) and hands it over; the thread closes it when it ends.

    Args:
        source: An opened frame source.
        maxsize: Queue size (live sources: how many newest frames are kept).
        max_frames: Stop after this many frames (None: no limit).
        stop: Event shared by the pipeline; set it to stop capture.
    """

    def __init__(
        self,
        source: FrameSource,
        maxsize: int,
        stop: threading.Event,
        max_frames: int | None = None,
    ) -> None:
        self.source = source
        self.frames: queue.Queue = queue.Queue(maxsize=maxsize)
        self.stop = stop
        self.max_frames = max_frames
        self.captured = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._closed = False

    def start(self) -> CaptureThread:
        self._thread.start()
        return self

    def __enter__(self) -> CaptureThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        end: EndOfStream | StageError = EndOfStream("stopped")
        try:
            while not self.stop.is_set():
                if self.max_frames is not None and self.captured >= self.max_frames:
                    end = EndOfStream("max_frames")
                    break
                item = self.source.read()
                if item is None:
                    end = EndOfStream("eof", warning=self.source.warning)
                    break
                image, t_media_s = item
                frame = Frame(self.source.name, self.captured, t_media_s, time.perf_counter(), image)
                self.captured += 1
                if self.source.live:
                    self._put_newest(frame)
                elif not put_until_stopped(self.frames, frame, self.stop):
                    break
        except BaseException as err:
            end = StageError("capture", err)
        finally:
            try:
                self.source.close()
            finally:
                if isinstance(end, StageError) or not self.stop.is_set():
                    put_until_stopped(self.frames, end, self.stop)

    def _put_newest(self, frame: Frame) -> None:
        while True:
            try:
                self.frames.put_nowait(frame)
                return
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the thread, drain the queue, join. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop.set()
        # A live source may be blocked in read() (reconnect backoff): let it return now.
        interrupt = getattr(self.source, "interrupt", None)
        if callable(interrupt):
            interrupt()
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            _drain(self.frames)
            self._thread.join(_POLL_S)
        _drain(self.frames)
        if self._thread.is_alive():
            log.warning("capture thread did not stop within %.1f s; leaving it behind", timeout_s)


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
