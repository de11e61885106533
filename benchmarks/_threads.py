"""CPU time of each thread of this process while a block runs (Linux ``/proc``; nothing elsewhere).

The pipeline runs three Python threads (capture, inference, and the caller's,
which renders and records) plus native threads of FFmpeg and ONNX Runtime. Which
of them is busy the whole time says which stage limits the frames/s. Threads
exit before the block ends, so ``/proc/self/task`` is sampled every
``interval_s`` and the last sample of each thread is kept.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["ThreadCpu"]

_TASKS = Path("/proc/self/task")


def _read(tid: str) -> tuple[str, float] | None:
    try:
        stat = (_TASKS / tid / "stat").read_text()
    except OSError:
        return None
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    return name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class ThreadCpu:
    """Context manager: CPU seconds per thread group during the ``with`` block.

    Groups: ``main`` (the calling thread), each Python thread by its name
    (``capture``, ``inference``), ``ffmpeg`` (FFmpeg's ``av:*`` threads) and
    ``native`` (other threads: ONNX Runtime's and OpenCV's pools).
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.available = _TASKS.is_dir()
        self._start: dict[str, float] = {}
        self._last: dict[str, tuple[str, float]] = {}
        self._python_names: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)

    def _sample(self) -> None:
        for t in threading.enumerate():
            if t.native_id is not None:
                self._python_names[str(t.native_id)] = t.name
        for tid in os.listdir(_TASKS):
            got = _read(tid)
            if got is not None:
                self._last[tid] = got

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> ThreadCpu:
        if self.available:
            self._sample()
            self._start = {tid: cpu for tid, (_, cpu) in self._last.items()}
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.available:
            self._stop.set()
            self._thread.join()
            self._sample()

    def groups(self) -> dict[str, float]:
        """CPU seconds per group during the block (empty when /proc is not there)."""
        main = str(threading.main_thread().native_id)
        sampler = str(self._thread.native_id)
        out: dict[str, float] = {}
        for tid, (comm, cpu) in self._last.items():
            if tid == sampler:
                continue
            if tid == main:
                group = "main"
            elif tid in self._python_names:
                group = self._python_names[tid]
            elif comm.startswith("av:"):
                group = "ffmpeg"
            else:
                group = "native"
            spent = cpu - self._start.get(tid, 0.0)
            if spent > 0:
                out[group] = out.get(group, 0.0) + spent
        return out
