"""The command line's progress bar as a sink: frames processed, of how many when every source is a file."""

from __future__ import annotations

from tqdm import tqdm

from stream.records import FrameResult
from stream.summary import RunSummary

__all__ = ["ProgressBar"]


class ProgressBar:
    """A tqdm bar over every source's processed frames (see :class:`stream.sinks.Sink`).

    It shows a total when every source is a file of known length, a count and a rate otherwise,
    and appears with the first frame (a camera that never comes up leaves no empty bar); a run
    of one still image shows none. :meth:`close` clears it before the summaries are printed.
    """

    wants_images = False

    def __init__(self) -> None:
        self._expected: dict[int, int | None] = {}
        self._bar: tqdm | None = None

    def on_start(self, summaries: list[RunSummary]) -> None:
        self._expected = {s.source_id: s.frames_expected for s in summaries}

    def on_source_added(self, summary: RunSummary) -> None:
        self._expected[summary.source_id] = summary.frames_expected
        if self._bar is not None:
            self._bar.total = self._total()
            self._bar.refresh()

    def on_result(self, result: FrameResult, summary: RunSummary) -> None:
        if self._bar is None:
            total = self._total()
            self._bar = tqdm(total=total, unit="frame", dynamic_ncols=True, leave=False,
                             disable=total is not None and total <= 1)
        self._bar.update()

    def on_source_end(self, summary: RunSummary) -> None:
        pass

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _total(self) -> int | None:
        counts = list(self._expected.values())
        return sum(c for c in counts if c) if counts and all(counts) else None
