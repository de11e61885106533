"""The one protocol every sink of a running pipeline follows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from stream.records import FrameResult
from stream.summary import RunSummary

__all__ = ["Sink", "source_added"]


class Sink(Protocol):
    """Something a running pipeline hands its results to: a window, a dashboard, a broker, a fleet's driver.

    Give sinks to :class:`~stream.pipeline.Pipeline` (``sinks=[...]``); each source's own files
    (annotated video or image, event log) and its summary are written by the pipeline
    (:class:`~stream.sinks.files.SourceOutputs`, chosen by the ``output`` config) before the sinks
    see the frame. All methods are called on the pipeline's consuming thread and must return at
    once: a sink that sends things elsewhere keeps a bounded queue and a thread of its own.

    Optional attributes and methods (a sink without them gets the defaults):

    - ``wants_images`` (default True): whether it needs ``result.frame.image_bgr`` annotated;
      drawing costs time, and nothing is drawn when no sink, window or recording needs it.
    - ``wants_stop`` (default False): read after each result; True ends the run as if every
      source had ended (a window its user closed).
    - ``on_source_added(summary)``: a source joined the running pipeline.
    """

    def on_start(self, summaries: list[RunSummary]) -> None:
        """The sources are open; one summary per source, updated live as frames pass."""

    def on_result(self, result: FrameResult, summary: RunSummary) -> None:
        """A frame of ``summary``'s source was processed and written to that source's files."""

    def on_source_end(self, summary: RunSummary) -> None:
        """That source ended (``summary.error`` says why, if it failed; ``warning`` "removed" when removed)."""


def source_added(sinks: Iterable[Sink], summary: RunSummary) -> None:
    """Tell the sinks that have ``on_source_added`` that a source joined the running pipeline."""
    for sink in sinks:
        added = getattr(sink, "on_source_added", None)
        if callable(added):
            added(summary)
