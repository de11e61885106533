"""What a sink can tell of one source's health from the results it sees, in constant memory.

A source is ``starting`` until its first processed frame, ``up`` while frames keep
coming, ``down`` after :data:`STALE_S` seconds without one (a camera being
reconnected), and ``ended``, ``failed`` or ``removed`` (taken out while running) once the
pipeline says it ended. A
*reconnect* is counted when frames resume after an outage: the media time of a
live source counts wall time since it opened, so a jump of more than
:data:`GAP_S` between two consecutive frames is time the source delivered nothing
(a reconnect, or a stall of the camera). A file read to its end never jumps.

Written by the pipeline's consuming thread (:meth:`SourceHealth.on_frame` is a few
assignments); read from any thread (:meth:`SourceHealth.snapshot`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from stream.records import FrameResult
from stream.redact import redact_url
from stream.summary import RunSummary

__all__ = ["GAP_S", "STALE_S", "SourceHealth", "topic_name"]

#: No frame for this long: the source is ``down``.
STALE_S = 2.0
#: Frames resuming after a media-time gap longer than this count as a reconnect.
GAP_S = 1.0


def topic_name(summary: RunSummary) -> str:
    """The source's name as one MQTT topic level or metric label: its run name, ``/+#`` and spaces made ``_``."""
    name = summary.name or redact_url(summary.source)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or f"source{summary.source_id}"


@dataclass
class _Snapshot:
    state: str
    fps: float
    reconnects: int
    frames_processed: int
    frames_dropped: int
    faces: int
    last_frame_age_s: float | None
    error: str | None


class SourceHealth:
    """One source's liveness (see the module docstring).

    Args:
        summary: The source's live summary (frames, faces and latencies are read from it).
    """

    def __init__(self, summary: RunSummary) -> None:
        self.summary = summary
        self.name = topic_name(summary)
        self.reconnects = 0
        self.ended = False
        self._lock = threading.Lock()
        self._times: deque[float] = deque(maxlen=60)
        self._t_last = 0.0
        self._t_media_last: float | None = None
        self._last_index = -1

    def on_frame(self, result: FrameResult, now: float | None = None) -> None:
        """A frame of this source was processed (``now``: ``time.monotonic()``)."""
        now = time.monotonic() if now is None else now
        t_media = result.frame.t_media_s
        with self._lock:
            if self._t_media_last is not None and t_media - self._t_media_last > GAP_S:
                self.reconnects += 1
            self._t_media_last = t_media
            self._t_last = now
            self._times.append(now)
            self._last_index = result.frame.index

    def on_end(self) -> None:
        """The pipeline ended this source (``summary.error`` says why, if it failed)."""
        self.ended = True

    def state(self, now: float | None = None) -> str:
        """``starting``, ``up``, ``down``, ``ended``, ``failed`` or ``removed``."""
        now = time.monotonic() if now is None else now
        if self.ended:
            if self.summary.error is not None:
                return "failed"
            return "removed" if self.summary.warning == "removed" else "ended"
        if self._t_last == 0.0:
            return "starting"
        return "up" if now - self._t_last < STALE_S else "down"

    def snapshot(self, now: float | None = None) -> _Snapshot:
        """State, recent frame rate, reconnects and counts, consistent with each other."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = list(self._times)
            t_last, last_index, reconnects = self._t_last, self._last_index, self.reconnects
        s = self.summary
        state = self.state(now)
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        fps = (len(times) - 1) / span if span > 0 and state == "up" else 0.0
        # The capture thread counts its drops only at the end; meanwhile a live source's frame index
        # counts every frame it read, so read - processed is what was dropped (or is still in flight).
        dropped = max(s.frames_dropped, last_index + 1 - s.frames_processed)
        error = redact_url(str(s.error)) if s.error is not None else (redact_url(s.warning) if s.warning else None)
        return _Snapshot(state, fps, reconnects, s.frames_processed, dropped, s.faces,
                         now - t_last if t_last else None, error)

    def record(self, now: float | None = None) -> dict[str, Any]:
        """The snapshot as JSON-ready fields, with latency percentiles."""
        snap = self.snapshot(now)
        lat = self.summary.latencies
        return {
            "source": self.name,
            "state": snap.state,
            "fps": round(snap.fps, 2),
            "frames_processed": snap.frames_processed,
            "frames_dropped": snap.frames_dropped,
            "faces": snap.faces,
            "reconnects": snap.reconnects,
            "latency_ms_p50": round(lat.percentile(50), 2) if lat.count else None,
            "latency_ms_p95": round(lat.percentile(95), 2) if lat.count else None,
            "last_frame_age_s": round(snap.last_frame_age_s, 3) if snap.last_frame_age_s is not None else None,
            "error": snap.error,
        }
