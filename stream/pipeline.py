"""The whole flow in one place: capture -> inference -> render/record.

    capture thread --frames queue--> inference thread --results queue--> this thread
    (decode)                         (detect + classify,                  (draw, write video,
                                      batched, + track)                    event log, window)

Every queue is bounded; every stage watches one stop event; an error in any
stage travels downstream as a StageError and is re-raised here, after which
the ``finally`` stops the others and closes every output, so Ctrl-C or a crash
still leaves a playable video and a complete event log.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stream.capture import CaptureThread, FrameSource, ImageSource, LiveSource, is_stream_url, open_source
from stream.config import Config
from stream.infer import EmotionClassifier, FaceDetector, InferenceThread
from stream.records import EndOfStream, FrameResult, StageError
from stream.render import EventLog, ImageWriter, VideoRecorder, Window, annotate, display_available, event_record
from stream.track import IouTracker

__all__ = ["Models", "RunOptions", "RunSummary", "default_outputs", "load_models", "run"]

log = logging.getLogger(__name__)

_POLL_S = 0.1


@dataclass(frozen=True)
class Models:
    """The two loaded, warmed-up models."""

    detector: FaceDetector
    classifier: EmotionClassifier


@dataclass(frozen=True)
class RunOptions:
    """Per-run choices that are not config (they come from the command line).

    Attributes:
        output: Annotated video/image path, or None for none.
        events: JSON Lines path, or None for none.
        display: Show a window (None: when the source is live and a display exists).
        max_frames: Stop after this many frames.
        max_seconds: Stop after this many seconds (exit 0).
        interrupt: Set (by a signal handler) to end the run early between two frames, outputs finalised.
    """

    output: Path | None = None
    events: Path | None = None
    display: bool | None = None
    max_frames: int | None = None
    max_seconds: float | None = None
    interrupt: threading.Event | None = None


@dataclass
class RunSummary:
    """What a run did, for the end-of-run summary."""

    source: str
    frames_captured: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    faces: int = 0
    label_counts: Counter = field(default_factory=Counter)
    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    warning: str = ""
    interrupted: bool = False

    @property
    def fps(self) -> float:
        return self.frames_processed / self.wall_s if self.wall_s > 0 else 0.0

    def latency_percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        total = sum(self.label_counts.values()) or 1
        shares = ", ".join(f"{k} {v / total:.0%}" for k, v in self.label_counts.most_common())
        out = [
            f"source: {self.source}",
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
        return out


def load_models(config: Config) -> Models:
    """Load and warm up the detector and the classifier (once per process)."""
    rt = config.runtime
    detector = FaceDetector.from_path(config.detector.model, rt.providers, rt.intra_op_threads,
                                      config.detector.score_threshold, config.detector.nms_iou,
                                      config.detector.min_face_px)
    classifier = EmotionClassifier.from_path(config.classifier.model, rt.providers, rt.intra_op_threads)
    detector.warm_up((1, rt.batch_size))
    classifier.warm_up((1, 4))
    return Models(detector, classifier)


def default_outputs(source: str, image_mode: bool, config: Config) -> tuple[Path | None, Path | None]:
    """Output paths when none are given: ``<output.dir>/<source stem>.annotated.<ext>`` and ``.events.jsonl``."""
    if source.isdigit():
        stem = f"webcam{source}"
    elif is_stream_url(source):
        stem = "stream"
    else:
        stem = Path(source).stem
    suffix = Path(source).suffix if image_mode else ".mp4"
    video = config.output.dir / f"{stem}.annotated{suffix}" if config.output.video else None
    events = config.output.dir / f"{stem}.events.jsonl" if config.output.events else None
    return video, events


def run(source_spec: str, config: Config, options: RunOptions, models: Models | None = None) -> RunSummary:
    """Process ``source_spec`` end to end. Ctrl-C ends the run early with its outputs finalised.

    Raises:
        StreamError: Bad source, model, config or output path; an error in any stage.
    """
    models = models or load_models(config)
    source = open_source(source_spec, config.capture)
    summary = RunSummary(source=source.name)
    stop = threading.Event()
    capture: CaptureThread | None = None
    inference: InferenceThread | None = None
    writers: list[VideoRecorder | ImageWriter | EventLog] = []
    window: Window | None = None
    try:
        image_mode = isinstance(source, ImageSource)
        labels = models.classifier.labels
        writer, events = _open_outputs(source_spec, source, image_mode, config, options)
        writers = [w for w in (writer, events) if w is not None]
        # Default window: a webcam on a machine with a display (a camera URL usually runs headless).
        webcam = isinstance(source, LiveSource) and not source.is_url
        show = options.display if options.display is not None else (webcam and display_available())
        window = Window(f"emostream - {source.name}") if show else None

        capture = CaptureThread(source, config.capture.live_buffer if source.live else config.capture.queue_size,
                                stop, options.max_frames).start()
        inference = InferenceThread(capture.frames, models.detector, models.classifier,
                                    _tracker(config, image_mode), config.runtime.batch_size,
                                    config.runtime.result_queue_size, stop).start()
        _consume(inference.results, labels, writer, events, window, config, options, source, summary)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        stop.set()
        if capture is not None:
            capture.close()
            summary.frames_captured, summary.frames_dropped = capture.captured, capture.dropped
        else:
            source.close()
        if inference is not None:
            inference.join()
        for w in writers:
            w.close()
        if window is not None:
            window.close()
    summary.outputs = [w.path for w in writers]
    return summary


def _open_outputs(source_spec: str, source: FrameSource, image_mode: bool, config: Config, options: RunOptions
                  ) -> tuple[VideoRecorder | ImageWriter | None, EventLog | None]:
    default_video, default_events = default_outputs(source_spec, image_mode, config)
    video_path = options.output or default_video
    events_path = options.events or default_events
    writer: VideoRecorder | ImageWriter | None = None
    if video_path is not None:
        writer = ImageWriter(video_path) if image_mode else VideoRecorder(
            video_path, source.size_wh, source.fps, config.output.codec)
    try:
        events = EventLog(events_path) if events_path is not None else None
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    return writer, events


def _tracker(config: Config, image_mode: bool) -> IouTracker:
    t = config.tracking
    smooth = t.smoothing == "on" or (t.smoothing == "auto" and not image_mode)
    return IouTracker(t.iou_threshold, t.max_missed_frames, t.smoothing_alpha if smooth else 1.0)


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


def _consume(results: queue.Queue, labels: tuple[str, ...], writer: VideoRecorder | ImageWriter | None,
             events: EventLog | None, window: Window | None, config: Config, options: RunOptions,
             source: FrameSource, summary: RunSummary) -> None:
    """The render/record stage, on the calling thread (a window must live on the main thread)."""
    progress = tqdm(total=source.frame_count if not source.live else None, unit="frame", dynamic_ncols=True,
                    disable=not config.output.progress or source.frame_count == 1, leave=False)
    t_start = time.perf_counter()
    recent: list[float] = []
    gaps = _GapWatch(source)
    try:
        while True:
            if options.max_seconds is not None and time.perf_counter() - t_start >= options.max_seconds:
                break
            if options.interrupt is not None and options.interrupt.is_set():
                summary.interrupted = True
                break
            try:
                item = results.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if isinstance(item, StageError):
                raise item.error
            if isinstance(item, EndOfStream):
                summary.warning = item.warning
                break
            result: FrameResult = item
            now = time.perf_counter()
            recent = [*recent[-29:], now]
            fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 else 0.0
            status = f"{fps:5.1f} fps  {result.latency_ms:4.0f} ms" if config.output.fps_overlay else ""
            if writer is not None or window is not None:
                annotate(result, labels, bars=config.output.probability_bars, status=status)
            if writer is not None:
                writer.write(result.frame.image_bgr)
            if events is not None:
                record = event_record(result, labels)
                gap_s = gaps.ended_before(result.frame.t_media_s)
                if gap_s:
                    record["gap_s"] = round(gap_s, 3)  # the source was down this long before this frame
                events.write_record(record)
            summary.frames_processed += 1
            summary.faces += len(result.faces)
            summary.label_counts.update(labels[int(np.argmax(f.probs))] for f in result.faces)
            summary.latencies_ms.append(result.latency_ms)
            progress.update()
            if window is not None and window.show(result.frame.image_bgr):
                break
    finally:
        summary.wall_s = time.perf_counter() - t_start
        progress.close()
