"""The thread plumbing every stage shares, written once.

A :class:`Worker` is a thread that produces items into one bounded queue and
ends with exactly one marker, sent from ``finally``: :class:`EndOfStream` when
its work ran out, :class:`StageError` when it raised. Every ``put`` waits with a
timeout and watches a stop event; :meth:`Worker.close` sets the event, drains the
queue so a producer blocked on it can finish, and joins with a timeout.

    class Doubler(Worker):
        def produce(self) -> EndOfStream:
            for x in range(10):
                if not self.emit(2 * x):
                    break               # stopped
            return EndOfStream("eof")
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from stream.records import EndOfStream, StageError

__all__ = ["Worker", "drain", "put_until_stopped"]

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


def drain(q: queue.Queue) -> None:
    """Empty ``q`` without waiting."""
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


class Worker:
    """A producer thread with a bounded output queue (see the module docstring).

    Args:
        name: Thread and stage name (used in :class:`StageError`).
        maxsize: Size of :attr:`out`.
        stop: Set it to stop the worker; shared or its own.
        source_id: Carried by the end and error markers (None: the whole pipeline).
        on_put: Called after every item put on :attr:`out` (a consumer waiting on
            several workers' queues uses it as its wake-up).
    """

    def __init__(self, name: str, maxsize: int, stop: threading.Event, *, source_id: int | None = None,
                 on_put: Callable[[], None] | None = None) -> None:
        self.name = name
        self.out: queue.Queue = queue.Queue(maxsize=maxsize)
        self.stop = stop
        self.source_id = source_id
        self._on_put = on_put
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False

    # -- for subclasses

    def produce(self) -> EndOfStream:
        """The work: :meth:`emit` items, return the end marker. Raising ends with a :class:`StageError`."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Release what :meth:`produce` used; runs on the worker thread before the end marker."""

    def interrupt(self) -> None:
        """Wake :meth:`produce` from a blocking call; runs on the closing thread."""

    def emit(self, item: object) -> bool:
        """Put ``item`` on :attr:`out`, waiting for room. Returns False when stopped first."""
        if not put_until_stopped(self.out, item, self.stop):
            return False
        self._notify()
        return True

    def _notify(self) -> None:
        if self._on_put is not None:
            self._on_put()

    # -- life cycle

    def start(self) -> Worker:
        self._thread.start()
        return self

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def started(self) -> bool:
        """Whether :meth:`start` ran (the thread then closes what it produces from)."""
        return self._thread.ident is not None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        end: EndOfStream | StageError = EndOfStream("stopped", source_id=self.source_id)
        try:
            end = self.produce()
        except BaseException as err:
            end = StageError(self.name, err, source_id=self.source_id)
        finally:
            try:
                self.cleanup()
            finally:
                if isinstance(end, StageError) or not self.stop.is_set():
                    put_until_stopped(self.out, end, self.stop)
                    self._notify()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop, drain, join. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop.set()
        self.interrupt()
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            drain(self.out)
            self._thread.join(_POLL_S)
        drain(self.out)
        if self._thread.is_alive():
            log.warning("%s thread did not stop within %.1f s; leaving it behind", self.name, timeout_s)
