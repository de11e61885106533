"""What a run did, per source: counts, speed, latency, outputs, and why it ended."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from stream.errors import StreamError
from stream.stats import LatencyHistogram

__all__ = ["RunSummary"]


@dataclass
class RunSummary:
    """One source's summary (constant size however long the run).

    Attributes:
        source: Display name of the source (no credentials).
        source_id: Its position in the run's source list.
        name: Its name in the run (outputs are named after it), or "".
        frames_expected: How many frames it will give (a file, or a ``max_frames`` limit); None when
            endless or unknown (a camera, a stream).
        error: Why this source failed (the others went on), or None.
    """

    source: str
    source_id: int = 0
    name: str = ""
    frames_expected: int | None = None
    frames_captured: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    faces: int = 0
    label_counts: Counter = field(default_factory=Counter)
    wall_s: float = 0.0
    latencies: LatencyHistogram = field(default_factory=LatencyHistogram)
    outputs: list[Path] = field(default_factory=list)
    warning: str = ""
    interrupted: bool = False
    error: StreamError | None = None

    @property
    def fps(self) -> float:
        return self.frames_processed / self.wall_s if self.wall_s > 0 else 0.0

    def latency_percentile(self, q: float) -> float:
        return self.latencies.percentile(q)

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        total = sum(self.label_counts.values()) or 1
        shares = ", ".join(f"{k} {v / total:.0%}" for k, v in self.label_counts.most_common())
        out = [
            f"source: {self.source}" + (f" (as {self.name})" if self.name and self.name not in self.source else ""),
            f"frames: {self.frames_processed} processed, {self.frames_captured} captured, "
            f"{self.frames_dropped} dropped; {self.faces} faces",
            f"speed: {self.fps:.1f} frames/s over {self.wall_s:.2f} s; latency p50 "
            f"{self.latency_percentile(50):.1f} ms, p95 {self.latency_percentile(95):.1f} ms",
        ]
        if shares:
            out.append(f"emotions: {shares}")
        out.extend(f"wrote: {p}" for p in self.outputs)
        if self.warning:
            out.append(f"warning: {self.warning}")
        if self.error is not None:
            out.append(f"failed: {self.error}")
        return out
