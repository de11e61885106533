"""One source's files and summary: the annotated video (or image) and the event log.

The pipeline makes one :class:`SourceOutputs` per source from the ``output`` config (or the
source's own ``output``/``events`` paths) and writes each result to it, on its consuming thread
or on that source's output thread, before the other sinks see the result.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from stream.capture import FrameSource, ImageSource
from stream.labels import face_label
from stream.records import FrameResult
from stream.render.draw import annotate
from stream.render.record import EventLog, ImageWriter, VideoRecorder, frame_event
from stream.summary import RunSummary

__all__ = ["SourceOutputs"]


class _GapWatch:
    """Finds the first frame after each outage of a live source (its ``gaps``, in media time)."""

    def __init__(self, source: FrameSource) -> None:
        self._gaps: list[tuple[float, float]] = getattr(source, "gaps", [])
        self._seen = 0

    def ended_before(self, t_media_s: float) -> float:
        """Seconds of outage that ended before ``t_media_s`` and were not reported yet (0 if none)."""
        total = 0.0
        # The capture thread appends; reading a list's length and items is safe under the GIL.
        while self._seen < len(self._gaps) and sum(self._gaps[self._seen]) <= t_media_s + 1e-6:
            total += self._gaps[self._seen][1]
            self._seen += 1
        return total


class SourceOutputs:
    """Writes one source's results and keeps its :class:`RunSummary`.

    Args:
        source: The opened source (for its outage list).
        summary: The summary to update.
        labels: The classifier's labels.
        writer: Annotated video or image writer, or None.
        events: Event log, or None.
        bars: Draw per-class probability bars.
        fps_overlay: Draw frames/s and latency on the frame (never on a still image).
        uncertain_below: Faces whose top probability is below this are labelled ``uncertain``.
        heads: The classifier's extra heads (``ModelContract.heads``), written into each face's record.
    """

    def __init__(self, source: FrameSource, summary: RunSummary, labels: Sequence[str],
                 writer: VideoRecorder | ImageWriter | None, events: EventLog | None, *,
                 bars: bool = True, fps_overlay: bool = True, uncertain_below: float = 0.0,
                 heads: Sequence[tuple[str, Sequence[str]]] = ()) -> None:
        self.summary = summary
        self.labels = tuple(labels)
        self.writer = writer
        self.events = events
        self.bars = bars
        self.fps_overlay = fps_overlay
        self.uncertain_below = uncertain_below
        self.heads = tuple(heads)
        self.still = isinstance(source, ImageSource)  # no frame rate on a still image
        self.closed = False
        self._gaps = _GapWatch(source)
        self._recent: list[float] = []
        self._t_start = time.perf_counter()

    def write(self, result: FrameResult, *, draw: bool = False) -> None:
        """Annotate (when recording or ``draw``), record and log one result; update the summary."""
        now = time.perf_counter()
        self._recent = [*self._recent[-29:], now]
        if self.writer is not None or draw:
            span = self._recent[-1] - self._recent[0]
            fps = (len(self._recent) - 1) / span if span > 0 else 0.0
            status = f"{fps:5.1f} fps  {result.latency_ms:4.0f} ms" if self.fps_overlay and not self.still else ""
            annotate(result, self.labels, bars=self.bars, status=status, uncertain_below=self.uncertain_below)
        if self.writer is not None:
            self.writer.write(result.frame.image_bgr)
        record = frame_event(result, self.labels, uncertain_below=self.uncertain_below, heads=self.heads)
        gap_s = self._gaps.ended_before(result.frame.t_media_s)
        if gap_s:
            record["gap_s"] = round(gap_s, 3)  # the source was down this long before this frame
        if self.events is not None:
            self.events.write_record(record)
        s = self.summary
        s.frames_processed += 1
        s.faces += len(result.faces)
        s.label_counts.update(face_label(f.probs, self.labels, self.uncertain_below, too_small=f.too_small)
                              for f in result.faces)
        s.latencies.add(result.latency_ms)

    def close(self) -> None:
        """Finalise the outputs (idempotent); the summary lists them."""
        if self.closed:
            return
        self.closed = True
        self.summary.wall_s = time.perf_counter() - self._t_start
        try:
            for w in (self.writer, self.events):
                if w is not None:
                    w.close()
        finally:
            # An output without a frame is not published (an earlier file of that name stays): not "wrote".
            self.summary.outputs = [w.path for w in (self.writer, self.events) if w is not None and w.published]

    def abort(self) -> None:
        """End after a failure (idempotent): nothing is published.

        An earlier file with an output's name stays as it was; the frames written so
        far stay in the output's partial file (see :mod:`stream.render.outputs`).
        """
        if self.closed:
            return
        self.closed = True
        self.summary.wall_s = time.perf_counter() - self._t_start
        for w in (self.writer, self.events):
            if w is not None:
                w.abort()
