"""What the dashboard knows of a running pipeline: an :class:`~stream.sinks.Sink` that keeps little.

Per source it keeps only the newest annotated frame (a reference, not a copy;
JPEG-encoded later by the web side, and only when a client asks), a bounded ring
of recent events, and what the health panel needs. ``on_result`` runs on the
pipeline's consuming thread and does constant, small work: nothing a browser does
(or fails to do) can slow the pipeline. A frame no client fetched is simply
replaced by the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from stream.records import FrameResult
from stream.redact import redact_url
from stream.render.record import frame_event
from stream.summary import RunSummary

__all__ = ["Dashboard", "SourceState"]

#: A live source with no frame for this long is shown as disconnected.
STALE_S = 2.0


@dataclass
class SourceState:
    """One source as the dashboard sees it. Written by the pipeline thread, read by the web side."""

    source_id: int
    name: str
    summary: RunSummary
    events: deque = field(default_factory=lambda: deque(maxlen=600))  # (seq, record), newest last
    frame_seq: int = 0
    frame_bgr: np.ndarray | None = None
    last_index: int = -1
    t_last_s: float = 0.0
    times_s: deque = field(default_factory=lambda: deque(maxlen=60))
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=300))
    last_error: str = ""
    ended: bool = False
    jpeg_seq: int = -1
    jpeg: bytes = b""


class Dashboard:
    """The pipeline sink behind ``emostream serve`` (see the module docstring).

    Args:
        labels: The classifier's labels (event records and the chart's legend).
        names: The sources' names, in ``source_id`` order (as in the outputs).
        uncertain_below: As ``classifier.uncertain_below``.
        ring: Recent events kept per source.
        jpeg_quality: Quality of the MJPEG frames (0-100).
    """

    def __init__(self, labels: Sequence[str], names: Sequence[str], *, uncertain_below: float = 0.0,
                 ring: int = 600, jpeg_quality: int = 75) -> None:
        self.labels = tuple(labels)
        self.names = [redact_url(n) for n in names]
        self.uncertain_below = uncertain_below
        self.ring = ring
        self.jpeg_quality = jpeg_quality
        self.sources: list[SourceState] = []
        self.started = threading.Event()
        self.seq = 0  # events of all sources, in order
        self._lock = threading.Lock()
        self._encode_lock = threading.Lock()
        self._unclaimed: deque[str] = deque(maxlen=20)  # recent warnings that named no known source

    # -- Sink (the pipeline's consuming thread) ------------------------------------------------

    def on_start(self, summaries: list[RunSummary]) -> None:
        with self._lock:
            self.sources = [SourceState(s.source_id, self.names[s.source_id] if s.source_id < len(self.names)
                                        else redact_url(s.source), s, events=deque(maxlen=self.ring))
                            for s in summaries]
        self.started.set()

    def on_source_added(self, summary: RunSummary) -> None:
        state = SourceState(summary.source_id, redact_url(summary.name or summary.source), summary,
                            events=deque(maxlen=self.ring))
        for message in list(self._unclaimed):
            if _names(state, message):
                state.last_error = message
        with self._lock:
            self.sources = [*self.sources, state]  # a new list: the web side may be iterating the old one

    def on_result(self, result: FrameResult, summary: RunSummary) -> None:
        state = self.sources[summary.source_id]
        record = dict(frame_event(result, self.labels, uncertain_below=self.uncertain_below))  # shared: add to a copy
        now = time.monotonic()
        with self._lock:
            self.seq += 1
            record["seq"] = self.seq
            state.events.append((self.seq, record))
            state.frame_bgr = result.frame.image_bgr  # nothing draws on it after the sinks: no copy
            state.frame_seq += 1
            state.last_index = result.frame.index
            state.t_last_s = now
            state.times_s.append(now)
            state.latencies_ms.append(result.latency_ms)

    def on_source_end(self, summary: RunSummary) -> None:
        state = self.sources[summary.source_id]
        with self._lock:
            state.ended = True
            if summary.error is not None:
                state.last_error = redact_url(str(summary.error))
            elif summary.warning:
                state.last_error = redact_url(summary.warning)

    # -- Log records (reconnects, stalls): the newest one naming a source is its "last error" ------

    def note_log(self, record: logging.LogRecord) -> None:
        """Keep a warning that names a source as that source's last error."""
        message = redact_url(record.getMessage())
        claimed = False
        for state in self.sources:
            if _names(state, message):
                state.last_error, claimed = message, True
        if not claimed:  # an added camera's first failure may come before the dashboard hears of it
            self._unclaimed.append(message)

    # -- The web side ------------------------------------------------------------------------------

    def frame_seq(self, source_id: int) -> int:
        """How many frames of that source were shown so far (0: none yet)."""
        return self.sources[source_id].frame_seq

    def jpeg(self, source_id: int) -> tuple[int, bytes]:
        """The newest frame as JPEG and its number; encoded once per frame, however many clients."""
        state = self.sources[source_id]
        with self._encode_lock:
            with self._lock:
                seq, image = state.frame_seq, state.frame_bgr
            if seq != state.jpeg_seq and image is not None:
                ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
                if ok:
                    state.jpeg_seq, state.jpeg = seq, buf.tobytes()
            return state.jpeg_seq, state.jpeg

    def events_since(self, since: int, source_id: int | None = None, limit: int = 500) -> list[dict]:
        """Events with ``seq > since`` (oldest first, at most ``limit``: the oldest are left out)."""
        with self._lock:
            chosen = [s for s in self.sources if source_id is None or s.source_id == source_id]
            out = [rec for s in chosen for seq, rec in s.events if seq > since]
        if len(chosen) > 1:
            out.sort(key=lambda r: r["seq"])
        return out[-limit:] if limit < len(out) else out

    def source_info(self, state: SourceState) -> dict[str, Any]:
        """Name, id and size of a source for ``/api/sources`` (no URL: only the redacted name)."""
        return {"id": state.source_id, "name": state.name, "source": redact_url(state.summary.source),
                "stream": f"/stream/{state.source_id}.mjpg", "status": f"/api/sources/{state.source_id}/status"}

    def status(self, source_id: int) -> dict[str, Any]:
        """Health of one source: state, connected, fps, latency p50/p95, counts, last error.

        ``state``: ``connecting`` (no frame yet), ``up``, ``down`` (no frame for ``STALE_S``, or
        none yet and a warning about it), ``ended``, ``failed`` or ``removed``.
        """
        state = self.sources[source_id]
        now = time.monotonic()
        with self._lock:
            times = list(state.times_s)
            latencies = np.array(state.latencies_ms, np.float64)
            s = state.summary
            processed, last_index, t_last = s.frames_processed, state.last_index, state.t_last_s
            ended, error = state.ended, state.last_error
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        fps = (len(times) - 1) / span if span > 0 and now - times[-1] < STALE_S else 0.0
        # The capture thread counts its drops only at the end; meanwhile a live source's frame index
        # counts every frame it read, so read - processed is what was dropped (or is still in flight).
        dropped = max(s.frames_dropped, last_index + 1 - processed)
        return {
            "id": source_id,
            "name": state.name,
            "connected": not ended and t_last > 0 and now - t_last < STALE_S,
            "ended": ended,
            "state": _state(s, ended, t_last, now, error),
            "fps": round(fps, 2),
            "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2) if latencies.size else None,
            "latency_ms_p95": round(float(np.percentile(latencies, 95)), 2) if latencies.size else None,
            "frames_processed": processed,
            "frames_dropped": dropped,
            "faces": s.faces,
            "last_frame_age_s": round(now - t_last, 3) if t_last > 0 else None,
            "last_error": redact_url(error) if error else None,
        }


def _names(state: SourceState, message: str) -> bool:
    return f"'{state.summary.source}'" in message or f"'{state.name}'" in message


def _state(summary: RunSummary, ended: bool, t_last: float, now: float, error: str) -> str:
    if ended:
        if summary.error is not None:
            return "failed"
        return "removed" if summary.warning == "removed" else "ended"
    if t_last <= 0:
        return "down" if error else "connecting"  # a camera that could not be opened yet is retried
    return "up" if now - t_last < STALE_S else "down"
