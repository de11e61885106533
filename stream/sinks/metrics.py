"""Prometheus metrics of a running pipeline or fleet: ``GET /metrics`` of ``emostream serve``, ``--metrics``.

:class:`PipelineMetrics` is a pipeline sink that keeps a few numbers per source
(``on_result`` adds to them: no lock shared with the web side, no allocation but a
bounded deque); a scrape turns them into metric families through a private
``prometheus_client`` registry (no process-global state, so several servers can run
in one process). Every metric has a ``source`` label (the source's name in the run):

    emostream_frames_processed_total        counter    frames through the whole pipeline
    emostream_frames_dropped_total          counter    frames a live source read and skipped (newest-first)
    emostream_faces_total                   counter    faces found, over all frames
    emostream_frame_latency_seconds         histogram  capture to result, per frame
    emostream_source_up                     gauge      1 while frames come (a frame in the last 2 s), else 0
    emostream_source_state{state=...}       gauge      1 for the current state: starting, up, down, ended, failed,
                                                       removed
    emostream_source_reconnects_total       counter    times frames resumed after more than 1 s without any
    emostream_source_fps                    gauge      frames per second over the last 60 frames
    emostream_emotion_faces_total{emotion}  counter    faces per label (as in the event log), since the start
    emostream_emotion_share{emotion}        gauge      each label's share of the faces seen in the last 10 s

Up, down and reconnects are :class:`stream.sinks.health.SourceHealth`'s, as on MQTT. A source
added while running has its metrics from then on (``starting`` until its first frame); a removed
one keeps its counters, in state ``removed``.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from stream.labels import UNCERTAIN, face_label
from stream.records import FrameResult
from stream.sinks.health import SourceHealth
from stream.summary import RunSummary

__all__ = ["LATENCY_BUCKETS_S", "SHARE_WINDOW_S", "STATES", "PipelineMetrics", "serve_metrics"]

#: Upper bounds of the latency histogram's buckets, seconds (``+Inf`` is added).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
#: ``emostream_emotion_share`` counts the faces of this many last seconds.
SHARE_WINDOW_S = 10.0
STATES = ("starting", "up", "down", "ended", "failed", "removed")


@dataclass
class _Source:
    health: SourceHealth
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=8192))  # (monotonic s, label), newest last


class PipelineMetrics:
    """The pipeline sink behind ``/metrics`` (see the module docstring).

    Args:
        labels: The classifier's labels.
        uncertain_below: As ``classifier.uncertain_below`` (then ``uncertain`` is a label too).
    """

    wants_images = False

    def __init__(self, labels: Sequence[str], *, uncertain_below: float = 0.0) -> None:
        self.labels = tuple(labels)
        self.uncertain_below = uncertain_below
        self._emotions = self.labels + ((UNCERTAIN,) if uncertain_below > 0 else ())
        self._sources: dict[int, _Source] = {}
        self._lock = threading.Lock()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- Sink (the pipeline's consuming thread) ------------------------------------------------

    def on_start(self, summaries: list[RunSummary]) -> None:
        for summary in summaries:
            self._source(summary)

    def on_source_added(self, summary: RunSummary) -> None:
        self._source(summary)

    def on_result(self, result: FrameResult, summary: RunSummary) -> None:
        src = self._source(summary)
        now = time.monotonic()
        src.health.on_frame(result, now)
        latency_s = result.latency_ms / 1000.0
        src.buckets[bisect.bisect_left(LATENCY_BUCKETS_S, latency_s)] += 1
        src.latency_sum_s += latency_s
        for face in result.faces:
            src.recent.append((now, face_label(face.probs, self.labels, self.uncertain_below)))

    def on_source_end(self, summary: RunSummary) -> None:
        self._source(summary).health.on_end()

    def _source(self, summary: RunSummary) -> _Source:
        src = self._sources.get(summary.source_id)
        if src is None:  # also a source added while running
            with self._lock:
                src = self._sources.setdefault(summary.source_id, _Source(SourceHealth(summary)))
        return src

    # -- prometheus_client's collector protocol (the scrape) -----------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The metric families, from the numbers kept so far."""
        now = time.monotonic()
        by = ["source"]
        processed = CounterMetricFamily("emostream_frames_processed", "Frames through the whole pipeline", labels=by)
        dropped = CounterMetricFamily("emostream_frames_dropped", "Frames a live source read and skipped "
                                      "(it keeps the newest)", labels=by)
        faces = CounterMetricFamily("emostream_faces", "Faces found, over all frames", labels=by)
        latency = HistogramMetricFamily("emostream_frame_latency_seconds", "Capture to result, per frame",
                                        labels=by)
        up = GaugeMetricFamily("emostream_source_up", "1 while frames come (one in the last 2 s), else 0", labels=by)
        state = GaugeMetricFamily("emostream_source_state", "1 for the source's current state",
                                  labels=[*by, "state"])
        reconnects = CounterMetricFamily("emostream_source_reconnects", "Times frames resumed after more than "
                                         "1 s without any (a reconnect or a stall)", labels=by)
        fps = GaugeMetricFamily("emostream_source_fps", "Frames per second over the last 60 frames", labels=by)
        per_label = CounterMetricFamily("emostream_emotion_faces", "Faces per emotion label since the start",
                                        labels=[*by, "emotion"])
        share = GaugeMetricFamily("emostream_emotion_share", f"Share of each emotion among the faces of the "
                                  f"last {SHARE_WINDOW_S:g} s (0 without faces)", labels=[*by, "emotion"])
        for src in list(self._sources.values()):
            name = [src.health.name]
            snap = src.health.snapshot(now)
            processed.add_metric(name, snap.frames_processed)
            dropped.add_metric(name, snap.frames_dropped)
            faces.add_metric(name, snap.faces)
            counts = list(src.buckets)
            cumulative, total = [], 0
            for bound, n in zip([*map(str, LATENCY_BUCKETS_S), "+Inf"], counts, strict=True):
                total += n
                cumulative.append((bound, total))
            latency.add_metric(name, cumulative, src.latency_sum_s)
            up.add_metric(name, 1.0 if snap.state == "up" else 0.0)
            for s in STATES:
                state.add_metric([*name, s], 1.0 if snap.state == s else 0.0)
            reconnects.add_metric(name, snap.reconnects)
            fps.add_metric(name, round(snap.fps, 3))
            so_far = dict(src.health.summary.label_counts)
            recent = Counter(label for t, label in list(src.recent) if now - t <= SHARE_WINDOW_S)
            seen = sum(recent.values())
            for emotion in self._emotions:
                per_label.add_metric([*name, emotion], so_far.get(emotion, 0))
                share.add_metric([*name, emotion], recent[emotion] / seen if seen else 0.0)
        yield from (processed, dropped, faces, latency, up, state, reconnects, fps, per_label, share)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)


def serve_metrics(metrics: PipelineMetrics, host: str, port: int) -> Any:
    """Serve ``GET /metrics`` of ``metrics`` on ``host:port`` from a thread of its own (the ``--metrics``
    of ``emostream run``, one process or a fleet's driver); returns the server (``shutdown()`` it).

    Raises:
        OSError: The address cannot be bound.
    """
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, host, registry=metrics.registry)
    return server
