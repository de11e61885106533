"""Timing rules shared by the benchmark and its peer subprocess: warm-up, repeats, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LONG_RUN_S", "WARMUP_FRAMES", "Measure", "enough_runs", "measure"]

#: Frames of the untimed warm-up before each measurement.
WARMUP_FRAMES = 60
#: A timed run longer than this is repeated only once more (keeps the slow peers within the time budget).
LONG_RUN_S = 10.0


def enough_runs(seconds: Sequence[float], repeats: int) -> bool:
    """True once ``repeats`` runs are done, or two when the first took longer than :data:`LONG_RUN_S`."""
    return len(seconds) >= repeats or (len(seconds) >= 2 and seconds[0] > LONG_RUN_S)


@dataclass
class Measure:
    """One measured thing: frames per timed run and the seconds of each run."""

    frames: int
    seconds: list[float]
    faces: int = 0

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

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"frames": self.frames, "seconds": [round(s, 5) for s in self.seconds],
                               "fps": round(self.fps, 2), "ms_per_frame": round(self.ms_per_frame, 4)}
        if self.faces:
            out["faces"] = self.faces
            out["ms_per_face"] = round(self.ms_per_face or 0.0, 4)
        return out


def measure(fn: Callable[[int], int], frames: int, repeats: int, warmup_frames: int = WARMUP_FRAMES,
            faces: int = 0) -> Measure:
    """Time ``fn(frames)`` after one untimed ``fn(warmup_frames)``, as often as :func:`enough_runs` says.

    ``fn`` returns how many frames it really handled; a run that handled fewer
    than asked is an error (a reader that stops early must not look fast).
    """
    if warmup_frames > 0:
        fn(min(warmup_frames, frames))
    seconds: list[float] = []
    while not enough_runs(seconds, repeats):
        t0 = time.perf_counter()
        done = fn(frames)
        seconds.append(time.perf_counter() - t0)
        if done != frames:
            raise RuntimeError(f"handled {done} frames, expected {frames}")
    return Measure(frames, seconds, faces)
