"""The live window as a sink: every source's newest annotated frame, one tile each; q or Esc ends the run."""

from __future__ import annotations

import numpy as np

from stream.records import FrameResult
from stream.render.display import Window, mosaic
from stream.summary import RunSummary

__all__ = ["WindowSink"]


class WindowSink:
    """Shows the annotated frames in an OpenCV window (see :class:`stream.sinks.Sink`).

    One source fills the window; several share it in a mosaic, in ``source_id`` order. If no
    window can be opened it says so once and the run goes on headless.

    Args:
        title: The window's title (free of credentials).
    """

    wants_images = True

    def __init__(self, title: str) -> None:
        self.window = Window(title)
        self.wants_stop = False  # the user pressed q or Esc
        self._latest: dict[int, np.ndarray] = {}
        self._count = 0

    def on_start(self, summaries: list[RunSummary]) -> None:
        self._count = len(summaries)

    def on_source_added(self, summary: RunSummary) -> None:
        self._count = max(self._count, summary.source_id + 1)

    def on_result(self, result: FrameResult, summary: RunSummary) -> None:
        self._latest[summary.source_id] = result.frame.image_bgr
        if self._count <= 1:
            image = result.frame.image_bgr
        else:
            image = mosaic([self._latest.get(i) for i in range(self._count)])
        if self.window.show(image):
            self.wants_stop = True

    def on_source_end(self, summary: RunSummary) -> None:
        pass

    def close(self) -> None:
        self.window.close()
