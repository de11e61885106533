"""Output work (drawing, encoding, the event log) of many sources on a few threads, in order per source.

The pipeline's consuming thread hands each source's work to the thread that owns that source
(``source_id % workers``), so one source's frames are written in order while other sources'
frames are drawn and encoded at the same time (OpenCV's drawing and FFmpeg's encoder release
the GIL). What is done comes back, in the order each thread finished it, through :meth:`finished`:
the consuming thread then gives it to the sinks and yields the result, as it does without a pool.
A job's exception comes back the same way and is raised by :meth:`finished`.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["OutputPool"]

_QUEUE_FRAMES = 32  # per thread: the consuming thread waits when a thread is this far behind
_STOP = object()


class OutputPool:
    """``workers`` threads, each with a bounded queue of jobs; see the module docstring.

    Args:
        workers: Threads (at least 1).
    """

    def __init__(self, workers: int) -> None:
        self._jobs: list[queue.Queue] = [queue.Queue(maxsize=_QUEUE_FRAMES) for _ in range(max(1, workers))]
        self._done: queue.SimpleQueue[tuple[Any, BaseException | None]] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, args=(q,), name=f"output-{i}", daemon=True)
                         for i, q in enumerate(self._jobs)]
        self._pending = 0  # submitted, not yet taken back through finished()
        self._closed = False
        for thread in self._threads:
            thread.start()

    def submit(self, key: int, job: Callable[[], object], tag: Any) -> None:
        """Run ``job`` on ``key``'s thread after the jobs submitted for it before; ``tag`` comes back."""
        self._jobs[key % len(self._jobs)].put((job, tag))
        self._pending += 1

    @property
    def pending(self) -> int:
        """Jobs submitted and not yet taken back."""
        return self._pending

    def finished(self, wait_s: float = 0.0) -> list[Any]:
        """The tags of the jobs done since the last call (waiting up to ``wait_s`` for the first one).

        Raises:
            BaseException: The first failed job's exception (the jobs after it are still run).
        """
        out: list[Any] = []
        try:
            while True:
                tag, err = self._done.get(timeout=wait_s) if wait_s > 0 and not out else self._done.get_nowait()
                self._pending -= 1
                if err is not None:
                    raise err
                out.append(tag)
        except queue.Empty:
            return out

    def close(self) -> None:
        """Let every thread finish the jobs it holds, then stop it (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for q in self._jobs:
            q.put(_STOP)
        for thread in self._threads:
            thread.join()

    def _work(self, jobs: queue.Queue) -> None:
        while True:
            item = jobs.get()
            if item is _STOP:
                return
            job, tag = item
            try:
                job()
            except BaseException as err:  # handed to the consuming thread, which raises it
                self._done.put((tag, err))
            else:
                self._done.put((tag, None))
