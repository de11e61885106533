"""The whole flow in one place: many sources -> one batched inference stage -> per-source sinks.

    capture thread, source 0 --queue--\\                                  /--> sinks of source 0
    capture thread, source 1 --queue---> inference thread --results--> this thread --> sinks of source 1
    ...                                 (Mux: fair batches;             (demux by source_id: draw,
                                          detect + classify;             write video, event log,
                                          a tracker per source)          summary; window / mosaic)

A file source is lossless, a live one keeps its newest frames. A source that
ends or fails ends alone: its sinks are finalised, its summary says why, and the
others go on; the run ends when every source has ended. An error of the
inference stage stops everything. Every queue is bounded, every wait watches one
stop event, and the ``finally`` closes every thread and output, so Ctrl-C or a
crash still leaves playable videos and complete event logs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from stream.capture import CaptureThread, FrameSource, ImageSource, LiveSource, open_source
from stream.capture.spec import SourceSpec, source_name, unique_names
from stream.config import CaptureConfig, Config
from stream.errors import ConfigError, SourceError, StreamError
from stream.infer import EmotionClassifier, FaceDetector, InferenceThread
from stream.infer.session import BatchBuckets, resolve_providers
from stream.records import EndOfStream, FrameResult, StageError
from stream.render import EventLog, ImageWriter, VideoRecorder, Window, display_available, mosaic
from stream.render.outputs import check_output_paths
from stream.render.sinks import SourceSinks
from stream.summary import RunSummary
from stream.track import IouTracker

__all__ = ["Models", "Observer", "Pipeline", "RunOptions", "RunSummary", "SourceSpec", "default_outputs", "load_models",
           "run", "source_name"]

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
        output: Annotated video/image path, or None for the default (single source only).
        events: JSON Lines path, or None for the default (single source only).
        display: Show a window (None: when a source is a webcam and a display exists).
        max_frames: Stop each source after this many frames.
        max_seconds: Stop after this many seconds (exit 0).
        interrupt: Set (by a signal handler) to end the run early between two frames, outputs finalised.
        publish_interrupted: Publish the outputs of the sources the interrupt cut short (``run``: yes,
            a Ctrl-C keeps what was recorded). A batch job says no: an unfinished input's outputs
            stay under their partial names (its earlier outputs, if any, as they were) and it is redone.
    """

    output: Path | None = None
    events: Path | None = None
    display: bool | None = None
    max_frames: int | None = None
    max_seconds: float | None = None
    interrupt: threading.Event | None = None
    publish_interrupted: bool = True


def load_models(config: Config) -> Models:
    """Load and warm up the detector and the classifier (once per process).

    With batch buckets (``runtime.batch_buckets``; ``auto``: when a GPU provider is
    used) every bucket is planned here, so no input shape is new mid-run. With
    ``runtime.uint8_input`` (``auto``: on a GPU) both models take uint8 and
    normalise inside the graph.
    """
    rt = config.runtime
    gpu = resolve_providers(rt.providers)[0] != "CPUExecutionProvider"
    bucketed = rt.batch_buckets == "on" or (rt.batch_buckets == "auto" and gpu)
    opts: dict[str, dict[str, str]] = {"cuda": {"cudnn_conv_algo_search": rt.cudnn_conv_algo_search},
            "tensorrt": {"trt_fp16_enable": str(rt.tensorrt_fp16), "trt_engine_cache_enable": "True",
                         "trt_engine_cache_path": str(rt.tensorrt_cache_dir.expanduser())}}
    uint8 = rt.uint8_input == "on" or (rt.uint8_input == "auto" and gpu)
    detector = FaceDetector.from_path(config.detector.model, rt.providers, rt.intra_op_threads,
                                      config.detector.score_threshold, config.detector.nms_iou,
                                      config.detector.min_face_px, provider_opts=opts, uint8_input=uint8,
                                      buckets=BatchBuckets.for_batch(rt.batch_size, bucketed))
    classifier = EmotionClassifier.from_path(config.classifier.model, rt.providers, rt.intra_op_threads,
                                             provider_opts=opts, uint8_input=uint8,
                                             buckets=BatchBuckets.for_batch(4 * rt.batch_size, bucketed),
                                             align=config.classifier.align)
    detector.warm_up((1, rt.batch_size))
    classifier.warm_up((1, 4))
    return Models(detector, classifier)


def default_outputs(source: str, image_mode: bool, config: Config, name: str | None = None
                    ) -> tuple[Path | None, Path | None]:
    """Output paths when none are given: ``<output.dir>/<name>.annotated.<ext>`` and ``.events.jsonl``."""
    stem = name or source_name(source)
    suffix = Path(source).suffix if image_mode else ".mp4"
    video = config.output.dir / f"{stem}.annotated{suffix}" if config.output.video else None
    events = config.output.dir / f"{stem}.events.jsonl" if config.output.events else None
    return video, events


def run(source_spec: str, config: Config, options: RunOptions, models: Models | None = None) -> RunSummary:
    """Process one source end to end (see :class:`Pipeline`). Ctrl-C ends it early, outputs finalised.

    Raises:
        StreamError: Bad source, model, config or output path; an error in any stage.
    """
    spec = SourceSpec(source_spec, output=options.output, events=options.events)
    summary = Pipeline([spec], config, options, models).run()[0]
    if summary.error is not None:
        raise summary.error
    return summary


class Observer(Protocol):
    """Something that watches a running pipeline (a web dashboard, a fleet monitor).

    ``wants_images``: whether it needs the frames annotated (drawing costs time; an
    observer without the attribute gets them).
    """

    def on_start(self, summaries: list[RunSummary]) -> None:
        """The sources are open; one summary per source, updated live as frames pass."""

    def on_result(self, result: FrameResult, summary: RunSummary) -> None:
        """A frame of ``summary``'s source was processed; ``result.frame.image_bgr`` is annotated."""

    def on_source_end(self, summary: RunSummary) -> None:
        """That source ended (``summary.error`` says why, if it failed)."""


class Pipeline:
    """Many sources, one batched inference stage, per-source sinks (see the module docstring).

    Args:
        sources: The sources, in ``source_id`` order; names must be unique.
        config: The configuration.
        options: Display, limits and the interrupt event.
        models: Loaded models (loaded from ``config`` when None).
        observers: Also told of every result and every source's end (a web dashboard);
            they run on the consuming thread and must return at once.
    """

    def __init__(self, sources: Sequence[SourceSpec], config: Config, options: RunOptions,
                 models: Models | None = None, observers: Sequence[Observer] = ()) -> None:
        if not sources:
            raise ValueError("a pipeline needs at least one source")
        if len(sources) > config.capture.max_sources:
            # Each file source buffers up to capture.queue_size decoded frames: 200 sources took 15 GB.
            raise ConfigError(f"{len(sources)} sources in one process: more than capture.max_sources "
                              f"({config.capture.max_sources}); raise it in a --config file if the memory is "
                              "there (each video file buffers up to capture.queue_size frames), or split "
                              "the sources over several runs")
        self.specs = unique_names(sources)
        self.config = config
        self.options = options
        self.models = models
        self.observers = list(observers)

    def run(self) -> list[RunSummary]:
        """Run until every source ended, ``max_seconds`` passed or the interrupt was set.

        Returns:
            One summary per source; a source that failed alone has its ``error`` set.

        Raises:
            StreamError: A source or output could not be opened (nothing was started),
                or the inference stage failed.
        """
        config, options = self.config, self.options
        models = self.models or load_models(config)
        stop = threading.Event()
        sources: list[FrameSource] = []
        sinks: list[SourceSinks] = []
        captures: list[CaptureThread] = []
        inference: InferenceThread | None = None
        window: Window | None = None
        summaries: list[RunSummary] = []
        try:
            open_deadline = None if options.max_seconds is None else time.monotonic() + options.max_seconds
            for spec in self.specs:
                # Files open here (bad input stops the run before any work); cameras and streams open
                # on their capture threads, retried while down, so one that is down is down alone.
                sources.append(open_source(spec.spec, _open_config(config.capture, open_deadline), paced=spec.paced,
                                           defer_live=True))
            for i, (spec, source) in enumerate(zip(self.specs, sources, strict=True)):
                summary = RunSummary(source=source.name, source_id=i, name=spec.name)
                summaries.append(summary)
                writer, events = _open_outputs(spec, source, config)
                sinks.append(SourceSinks(source, summary, models.classifier.labels, writer, events,
                                         bars=config.output.probability_bars,
                                         fps_overlay=config.output.fps_overlay,
                                         uncertain_below=config.classifier.uncertain_below))
            window = _window(sources, options)
            wake = threading.Event()  # set by every capture thread after a put; the mux waits on it
            for i, (spec, source) in enumerate(zip(self.specs, sources, strict=True)):
                size = config.capture.live_buffer if source.live else config.capture.queue_size
                captures.append(CaptureThread(source, size, stop, spec.max_frames or options.max_frames,
                                              source_id=i, on_put=wake.set, open_first=isinstance(source, LiveSource)))
            trackers = [_tracker(config, isinstance(s, ImageSource)) for s in sources]
            inference = InferenceThread([c.frames for c in captures], models.detector, models.classifier,
                                        trackers.__getitem__, config.runtime.batch_size,
                                        config.runtime.result_queue_size, stop,
                                        batch_timeout_s=config.runtime.batch_timeout_ms / 1000.0,
                                        detect_every=config.runtime.detect_every, ready=wake)
            for capture in captures:
                capture.start()
            inference.start()
            for observer in self.observers:
                observer.on_start(summaries)
            _consume(inference.results, sinks, sources, window, options, config, self.observers)
        except KeyboardInterrupt:
            for summary in summaries:
                summary.interrupted = True
        except BaseException:
            for sink in sinks:
                sink.abort()  # a failed run publishes nothing: earlier files with the outputs' names stay
            raise
        finally:
            stop.set()
            for i, source in enumerate(sources):
                if i < len(captures):
                    captures[i].close()
                    summaries[i].frames_captured = captures[i].captured
                    summaries[i].frames_dropped = captures[i].dropped
                    _never_up(source, summaries[i])
                else:
                    source.close()
            if inference is not None:
                inference.close()
            for sink in sinks:
                if sink.summary.interrupted and not options.publish_interrupted:
                    sink.abort()  # a source that had already ended is closed: abort leaves it published
                else:
                    sink.close()
            if window is not None:
                window.close()
        return summaries


def _never_up(source: FrameSource, summary: RunSummary) -> None:
    """A camera still down when the run ended (``max_seconds``) failed: say why it never came up."""
    if isinstance(source, LiveSource) and not source.ever_opened and summary.error is None \
            and not summary.interrupted:
        summary.error = SourceError(f"source '{source.name}' could not be opened: {source.last_error}")


def _open_outputs(spec: SourceSpec, source: FrameSource, config: Config
                  ) -> tuple[VideoRecorder | ImageWriter | None, EventLog | None]:
    image_mode = isinstance(source, ImageSource)
    default_video, default_events = default_outputs(spec.spec, image_mode, config, spec.name or None)
    video_path = spec.output or default_video
    events_path = spec.events or default_events
    check_output_paths(getattr(source, "path", None), video_path, events_path, image_mode=image_mode)
    writer: VideoRecorder | ImageWriter | None = None
    if video_path is not None:
        writer = ImageWriter(video_path) if image_mode else VideoRecorder(
            video_path, source.size_wh, source.fps, config.output.codec)
    try:
        events = EventLog(events_path) if events_path is not None else None
    except BaseException:
        if writer is not None:
            writer.abort()  # an earlier file with that name stays as it was
        raise
    return writer, events


def _open_config(capture: CaptureConfig, deadline: float | None) -> CaptureConfig:
    """``max_seconds`` bounds the opening too: a port that accepts and never answers is given up by then.

    The deadline counts from the first open (after the models are loaded); a source keeps the
    bounded timeout for its reconnects. Half a second at least, so a late source still gets a try.
    """
    if deadline is None:
        return capture
    left_s = max(0.5, deadline - time.monotonic())
    return replace(capture, open_timeout_s=min(capture.open_timeout_s, left_s))


def _window(sources: list[FrameSource], options: RunOptions) -> Window | None:
    # Default window: a webcam on a machine with a display (a camera URL usually runs headless).
    webcam = any(isinstance(s, LiveSource) and not s.is_url for s in sources)
    show = options.display if options.display is not None else (webcam and display_available())
    if not show:
        return None
    title = sources[0].name if len(sources) == 1 else f"{len(sources)} sources"
    return Window(f"emostream - {title}")


def _tracker(config: Config, image_mode: bool) -> IouTracker:
    t = config.tracking
    smooth = t.smoothing == "on" or (t.smoothing == "auto" and not image_mode)
    return IouTracker(t.iou_threshold, t.max_missed_frames, t.smoothing_alpha if smooth else 1.0)


def _consume(results: queue.Queue, sinks: list[SourceSinks], sources: list[FrameSource], window: Window | None,
             options: RunOptions, config: Config, observers: Sequence[Observer] = ()) -> None:
    """The demux and render/record stage, on the calling thread (a window must live on the main thread)."""
    counts = [s.frame_count or 0 for s in sources]
    known = all(not s.live and s.frame_count for s in sources)  # a total for the progress bar
    show_progress = config.output.progress and not (known and sum(counts) <= 1)
    progress: tqdm | None = None  # from the first frame on: a camera that never comes up leaves no empty bar
    t_start = time.perf_counter()
    draw_for_observers = any(getattr(o, "wants_images", True) for o in observers)
    try:
        while True:
            if options.max_seconds is not None and time.perf_counter() - t_start >= options.max_seconds:
                break
            if options.interrupt is not None and options.interrupt.is_set():
                for sink in sinks:
                    if not sink.closed:  # a source that ended before the interrupt is complete
                        sink.summary.interrupted = True
                break
            try:
                item = results.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if isinstance(item, FrameResult):
                sink = sinks[item.frame.source_id]
                sink.write(item, draw=window is not None or draw_for_observers)
                for observer in observers:
                    observer.on_result(item, sink.summary)
                if progress is None:
                    progress = tqdm(total=sum(counts) if known else None, unit="frame", dynamic_ncols=True,
                                    disable=not show_progress, leave=False)
                progress.update()
                if window is not None and window.show(_window_image(sinks)):
                    break
            elif item.source_id is None:  # the inference stage itself
                if isinstance(item, StageError):
                    raise item.error
                break
            else:
                _end_source(sinks[item.source_id], item, others=len(sinks) > 1)
                for observer in observers:
                    observer.on_source_end(sinks[item.source_id].summary)
    finally:
        if progress is not None:
            progress.close()


def _end_source(sink: SourceSinks, marker: EndOfStream | StageError, *, others: bool = True) -> None:
    """One source ended: finalise its outputs now; a failure is kept in its summary, the others go on.

    A source that dies mid-run (a camera past its reconnect budget) still publishes what it
    recorded, complete up to the outage, as a truncated file does; only a failure of the
    outputs or of the whole run publishes nothing (:meth:`SourceSinks.abort`).
    """
    if isinstance(marker, StageError):
        err = marker.error
        if not isinstance(err, StreamError):
            raise err  # a bug, not a bad source: stop everything
        sink.summary.error = err
        if others:  # the others go on: say it now; a lone source's error is the run's one error line
            log.warning("source %s failed: %s", sink.summary.source, err)
    else:
        sink.summary.warning = marker.warning
    sink.close()


def _window_image(sinks: list[SourceSinks]):  # type: ignore[no-untyped-def]
    if len(sinks) == 1:
        return sinks[0].last_image
    return mosaic([s.last_image for s in sinks])
