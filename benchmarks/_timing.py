"""Timing rules shared by the benchmark and its peer subprocess: warm-up, repeats, medians, machine noise.

Every timed run also records how many cores *other processes* kept busy while
it ran (``/proc/stat`` for the machine minus ``/proc/self/stat`` for this
process), so a figure taken on a shared, noisy machine says so. With
``Policy.quiet_retries`` a run during which others used more than
:data:`OTHERS_LIMIT_CORES` is discarded and redone (at most that many times per
figure); runs are chosen by the machine's load, never by their own speed.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["LONG_RUN_S", "OTHERS_LIMIT_CORES", "WARMUP_FRAMES", "Measure", "Policy", "Run", "enough_runs",
           "measure", "timed_runs"]

#: Frames of the untimed warm-up before each measurement.
WARMUP_FRAMES = 60
#: A timed run longer than this is repeated only once more (keeps the slow peers within the time budget).
LONG_RUN_S = 10.0
#: A run during which other processes kept more cores busy than this counts as disturbed.
OTHERS_LIMIT_CORES = 0.25
#: Runs shorter than this are too short for /proc/stat's 10 ms ticks to say anything about the load.
_MIN_JUDGED_S = 0.3

T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    """How each figure is measured.

    Attributes:
        repeats: Timed runs per figure (fewer when a run is long, see :func:`enough_runs`).
        quiet_retries: Disturbed runs to discard and redo per figure (0: keep every run).
    """

    repeats: int = 3
    quiet_retries: int = 0


def enough_runs(seconds: Sequence[float], repeats: int) -> bool:
    """True once ``repeats`` runs are done, or two when the first took longer than :data:`LONG_RUN_S`."""
    return len(seconds) >= repeats or (len(seconds) >= 2 and seconds[0] > LONG_RUN_S)


def _cpu_snapshot() -> tuple[float, int, int] | None:
    """(CPU seconds of this process, busy jiffies of the machine, all jiffies), or None off Linux."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            machine = [int(x) for x in f.readline().split()[1:9]]  # user .. steal; guest is inside user
    except (OSError, ValueError, IndexError):
        return None
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads
    idle = machine[3] + machine[4]  # idle + iowait
    return own, sum(machine) - idle, sum(machine)


def _others_cores(before: tuple[float, int, int] | None, after: tuple[float, int, int] | None,
                  seconds: float) -> float | None:
    if before is None or after is None or seconds < _MIN_JUDGED_S or after[2] <= before[2]:
        return None
    machine = (after[1] - before[1]) / (after[2] - before[2]) * (os.cpu_count() or 1)
    return max(0.0, machine - (after[0] - before[0]) / seconds)


@dataclass
class Run(Generic[T]):
    """One timed run: its wall time, the cores other processes used meanwhile, and what it returned."""

    seconds: float
    others_cores: float | None
    value: T


def timed_runs(fn: Callable[[], T], policy: Policy) -> tuple[list[Run[T]], int]:
    """Call ``fn`` as often as :func:`enough_runs` says, redoing disturbed runs as ``policy`` allows.

    Returns:
        The kept runs, and how many disturbed runs were discarded.
    """
    runs: list[Run[T]] = []
    retries = policy.quiet_retries
    discarded = 0
    while not enough_runs([r.seconds for r in runs], policy.repeats):
        before = _cpu_snapshot()
        t0 = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - t0
        others = _others_cores(before, _cpu_snapshot(), seconds)
        if others is not None and others > OTHERS_LIMIT_CORES and retries > 0:
            retries -= 1
            discarded += 1
            continue
        runs.append(Run(seconds, others, value))
    return runs, discarded


@dataclass
class Measure:
    """One measured thing: frames per timed run, the seconds of each run, and the machine's noise."""

    frames: int
    seconds: list[float]
    faces: int = 0
    others_cores: list[float | None] = field(default_factory=list)
    discarded: int = 0

    @classmethod
    def from_runs(cls, frames: int, runs: Sequence[Run[Any]], discarded: int, faces: int = 0) -> Measure:
        return cls(frames, [r.seconds for r in runs], faces, [r.others_cores for r in runs], discarded)

    @property
    def s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def fps(self) -> float:
        return self.frames / self.s if self.s > 0 else 0.0

    @property
    def ms_per_frame(self) -> float:
        return 1000.0 * self.s / self.frames if self.frames else 0.0

    @property
    def ms_per_face(self) -> float | None:
        return 1000.0 * self.s / self.faces if self.faces else None

    @property
    def others(self) -> float | None:
        """Mean cores other processes used during the timed runs (None when the runs were too short to tell)."""
        known = [x for x in self.others_cores if x is not None]
        return statistics.fmean(known) if known else None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"frames": self.frames, "seconds": [round(s, 5) for s in self.seconds],
                               "fps": round(self.fps, 2), "ms_per_frame": round(self.ms_per_frame, 4)}
        if self.faces:
            out["faces"] = self.faces
            out["ms_per_face"] = round(self.ms_per_face or 0.0, 4)
        if self.others is not None:
            out["other_processes_cores"] = round(self.others, 2)
        if self.discarded:
            out["discarded_runs"] = self.discarded
        return out


def measure(fn: Callable[[int], int], frames: int, policy: Policy, warmup_frames: int = WARMUP_FRAMES,
            faces: int = 0) -> Measure:
    """Time ``fn(frames)`` after one untimed ``fn(warmup_frames)``, as :func:`timed_runs` says.

    ``fn`` returns how many frames it really handled; a run that handled fewer
    than asked is an error (a reader that stops early must not look fast).
    """
    if warmup_frames > 0:
        fn(min(warmup_frames, frames))
    runs, discarded = timed_runs(lambda: fn(frames), policy)
    for r in runs:
        if r.value != frames:
            raise RuntimeError(f"handled {r.value} frames, expected {frames}")
    return Measure.from_runs(frames, runs, discarded, faces)
