"""The whole flow in one place: many sources -> one batched inference stage -> each source's outputs -> the sinks.

    capture thread, source 0 --queue--\\                                  /--> outputs of source 0
    capture thread, source 1 --queue---> inference thread --results--> this thread --> outputs of source 1
    ...                                 (Mux: fair batches;             (demux by source_id: draw,
    (decode, and scale each frame         detect + classify;             write video, event log,
     for the detector while hot)          a tracker per source)          summary; then the sinks; yield)

Drive it from Python::

    with Pipeline(["clip.mp4", "rtsp://cam/1"], config) as pipeline:
        for result in pipeline:            # a FrameResult of any source, after its outputs took it
            print(result.frame.source_id, [f.probs.argmax() for f in result.faces])
    pipeline.summaries                     # one RunSummary per source

or let it run to the end: ``Pipeline(sources, config, sinks=[...]).run()``; sinks
(:class:`stream.sinks.Sink`: a dashboard, an MQTT publisher, your own) get every result too.
Sources are spec strings, :class:`SourceSpec` or :class:`~stream.capture.FrameSource` objects
(anything that yields frames), and can be added and removed while it runs
(:meth:`Pipeline.add_source`, :meth:`Pipeline.remove_source`, from any thread): each source
brings its own capture thread, tracker, outputs and summary.

A file source is lossless, a live one keeps its newest frames; a camera that is down (at start or
later) is retried on its own capture thread. A source that ends or fails ends alone: its outputs
are finalised, its summary says why, and the others go on; the run ends when every source has
ended (``keep_open``: when it is closed). An error of the inference stage stops everything. Every
queue is bounded, every wait watches a stop event, and :meth:`Pipeline.close` closes every thread
and output, so Ctrl-C or a crash still leaves playable videos and complete event logs.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

from stream.capture import CaptureThread, FrameSource, ImageSource, LiveSource, open_source
from stream.capture.spec import SourceSpec, source_name, unique_names
from stream.config import Config
from stream.errors import ConfigError, SourceError, StreamError
from stream.infer import EmotionClassifier, FaceDetector, InferenceThread
from stream.infer.session import BatchBuckets, auto_inference_workers, auto_output_workers, resolve_providers
from stream.records import EndOfStream, FrameResult, StageError
from stream.render import EventLog, ImageWriter, VideoRecorder, display_available
from stream.render.outputs import check_output_paths
from stream.render.pool import OutputPool
from stream.sinks import Sink
from stream.sinks.base import source_added
from stream.sinks.files import SourceOutputs
from stream.sinks.window import WindowSink
from stream.summary import RunSummary
from stream.track import IouTracker

__all__ = ["Models", "Pipeline", "RunOptions", "RunSummary", "Sink", "SourceSpec", "default_outputs",
           "load_models", "source_name"]

log = logging.getLogger(__name__)

_POLL_S = 0.1
#: With frames at the output threads, their results are looked for this often.
_POOL_POLL_S = 0.005

@dataclass(frozen=True)
class Models:
    """The two loaded, warmed-up models."""

    detector: FaceDetector
    classifier: EmotionClassifier


@dataclass(frozen=True)
class RunOptions:
    """Per-run choices that are not config (they come from the command line).

    Attributes:
        display: Show a window (None: when a source is a webcam and a display exists).
        max_frames: Stop each source after this many frames.
        max_seconds: Stop after this many seconds (exit 0).
        interrupt: Set (by a signal handler) to end the run early between two frames, outputs finalised.
        publish_interrupted: Publish the outputs of the sources the interrupt cut short (``run``: yes,
            a Ctrl-C keeps what was recorded). A batch job says no: an unfinished input's outputs
            stay under their partial names (its earlier outputs, if any, as they were) and it is redone.
        keep_open: Keep running when every source has ended, for sources added later (a dashboard).
    """

    display: bool | None = None
    max_frames: int | None = None
    max_seconds: float | None = None
    interrupt: threading.Event | None = None
    publish_interrupted: bool = True
    keep_open: bool = False


def load_models(config: Config) -> Models:
    """Load and warm up the detector and the classifier (once per process).

    With batch buckets (``runtime.batch_buckets``; ``auto``: when a GPU provider is
    used) every bucket is planned here, so no input shape is new mid-run. With
    ``runtime.uint8_input`` (``auto``: on a GPU) the classifier (and a float detector)
    takes uint8 and normalises inside the graph; the shipped detectors always do.
    """
    rt = config.runtime
    gpu = resolve_providers(rt.providers)[0] != "CPUExecutionProvider"
    bucketed = rt.batch_buckets == "on" or (rt.batch_buckets == "auto" and gpu)
    opts: dict[str, dict[str, str]] = {"cuda": {"cudnn_conv_algo_search": rt.cudnn_conv_algo_search},
            "tensorrt": {"trt_fp16_enable": str(rt.tensorrt_fp16), "trt_engine_cache_enable": "True",
                         "trt_engine_cache_path": str(rt.tensorrt_cache_dir.expanduser())}}
    # The same bits either way. On a CPU, auto leaves it off: rewriting the classifier's graph (the
    # shipped detectors take uint8 already) imports the onnx package, +0.6 s at every start, to
    # skip normalising a few 48x48 crops per batch (benchmarks/RESULTS.md).
    uint8 = rt.uint8_input == "on" or (rt.uint8_input == "auto" and gpu)
    det = config.detector
    detector = FaceDetector.from_path(det.model, rt.providers, rt.intra_op_threads, det.score_threshold, det.nms_iou,
                                      det.min_face_px, provider_opts=opts, uint8_input=uint8,
                                      buckets=BatchBuckets.for_batch(rt.batch_size, bucketed), strategy=det.strategy,
                                      small_face_px=det.small_face_px, tiles_above_px=det.tiles_above_px,
                                      video_tiles_above_px=det.video_tiles_above_px, yunet_model=det.yunet_model,
                                      yunet_score_threshold=det.yunet_score_threshold,
                                      probe_every=det.video_probe_every, probe_hold=det.video_probe_hold)
    classifier = EmotionClassifier.from_path(config.classifier.model, rt.providers, rt.intra_op_threads,
                                             provider_opts=opts, uint8_input=uint8,
                                             buckets=BatchBuckets.for_batch(4 * rt.batch_size, bucketed),
                                             align=config.classifier.align,
                                             min_face_px=config.classifier.min_face_px)
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


@dataclass
class _Lane:
    """One source's way through the pipeline: its source, capture thread, tracker, outputs and summary."""

    spec: SourceSpec
    source: FrameSource
    outputs: SourceOutputs
    tracker: IouTracker
    capture: CaptureThread
    stop: threading.Event = field(default_factory=threading.Event)
    ending: bool = False  # its end was handed to its outputs: later results of it are dropped

    @property
    def summary(self) -> RunSummary:
        return self.outputs.summary


class Pipeline:
    """Many sources, one batched inference stage, per-source outputs (see the module docstring).

    Args:
        sources: Spec strings (paths, URLs, webcam indexes), :class:`SourceSpec` or unopened
            :class:`~stream.capture.FrameSource` objects, in ``source_id`` order; names must be unique.
        config: The configuration (the defaults when None).
        options: Display, limits, the interrupt event.
        models: Loaded models (loaded from ``config`` when None).
        sinks: Also given every result and told of every source's start and end
            (:class:`stream.sinks.Sink`: a web dashboard, an MQTT publisher); they run on the
            consuming thread and must return at once. A window is added when ``options.display``
            asks for one (or a webcam runs where a display exists).

    Raises:
        ConfigError: More sources than ``capture.max_sources``.
    """

    def __init__(self, sources: Sequence[str | SourceSpec | FrameSource], config: Config | None = None,
                 options: RunOptions | None = None, models: Models | None = None,
                 sinks: Sequence[Sink] = ()) -> None:
        self.config = config or Config()
        self.options = options or RunOptions()
        self.specs = unique_names([_as_spec(s) for s in sources])
        _check_count(len(self.specs), self.config)
        if not self.specs and not self.options.keep_open:
            raise ValueError("a pipeline needs at least one source (or keep_open, to add them later)")
        self.models = models
        self.sinks = list(sinks)
        self._lanes: list[_Lane] = []
        self._inference: InferenceThread | None = None
        self._window: WindowSink | None = None  # one of the sinks, closed with the pipeline
        self._outputs: OutputPool | None = None  # drawing/encoding off this thread (runtime.output_workers)
        self._requests: queue.SimpleQueue[tuple[str, Any, concurrent.futures.Future]] = queue.SimpleQueue()
        self._wake = threading.Event()  # set by every capture thread after a put; the mux waits on it
        self._consumer: int | None = None  # the consuming thread's ident
        self._started = self._closed = False
        self._deadline: float | None = None

    # -- the public surface ---------------------------------------------------------------------

    @property
    def summaries(self) -> list[RunSummary]:
        """One summary per source (added ones included), live while running, final after :meth:`close`."""
        return [lane.summary for lane in self._lanes]

    def run(self) -> list[RunSummary]:
        """Run until every source ended, ``max_seconds`` passed or the interrupt was set (Ctrl-C too).

        Returns:
            One summary per source; a source that failed alone has its ``error`` set.

        Raises:
            StreamError: A source or output could not be opened (nothing was started),
                or the inference stage failed.
        """
        try:
            with self:
                for _ in self:
                    pass
        except KeyboardInterrupt:
            pass  # __exit__ marked the summaries interrupted and finalised the outputs
        return self.summaries

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            for lane in self._lanes:
                if not lane.ending:  # a source that ended before the interrupt is complete
                    lane.summary.interrupted = True
            self.close()
        elif kind is not None:
            self.close(failed=True)  # a failed run publishes nothing: earlier files with the outputs' names stay
        else:
            self.close()

    def start(self) -> None:
        """Load the models (if not given), open the sources and outputs, start the threads.

        Files are opened here, so bad input stops the run before any work; cameras and
        streams open on their capture threads, retried while down, so one that is down is
        down alone.

        Raises:
            StreamError: A source, model or output could not be opened (nothing is left running).
        """
        if self._started:
            return
        self._started = True
        config, options = self.config, self.options
        try:
            self.models = self.models or load_models(config)
            if options.max_seconds is not None:
                self._deadline = time.monotonic() + options.max_seconds
            opened: list[tuple[SourceSpec, FrameSource, bool]] = []
            try:
                for spec in self.specs:
                    opened.append((spec, *self._open(spec)))
            except BaseException:
                for _, source, _ in opened:
                    source.close()
                raise
            for i, (spec, source, open_first) in enumerate(opened):
                try:
                    self._lanes.append(self._lane(i, spec, source, open_first))
                except BaseException:
                    for _, rest, _ in opened[i:]:
                        rest.close()
                    raise
            self._window = _window([lane.source for lane in self._lanes], options)
            if self._window is not None:
                self.sinks.append(self._window)
            workers = config.runtime.output_workers if config.runtime.output_workers >= 0 else auto_output_workers()
            self._outputs = OutputPool(workers) if workers > 0 else None
            self._inference = InferenceThread([lane.capture.frames for lane in self._lanes], self.models.detector,
                                              self.models.classifier, self._tracker_of, config.runtime.batch_size,
                                              config.runtime.result_queue_size, threading.Event(),
                                              batch_timeout_s=config.runtime.batch_timeout_ms / 1000.0,
                                              detect_every=config.runtime.detect_every, ready=self._wake,
                                              keep_open=options.keep_open,
                                              workers=config.runtime.inference_workers or (
                                                  auto_inference_workers() if len(self._lanes) > 1 or options.keep_open
                                                  else 1))
            for lane in self._lanes:
                lane.capture.start()
            self._inference.start()
            for sink in self.sinks:
                sink.on_start(self.summaries)
        except BaseException:
            self.close(failed=True)
            raise

    def __iter__(self) -> Iterator[FrameResult]:
        """Each processed frame of every source, after its outputs and sinks took it.

        The results of one source come in capture order. Iteration ends when every source
        ended, ``max_seconds`` passed, the interrupt was set or a sink asked to stop (the window
        was closed); an error of the inference stage is raised here.
        """
        self.start()
        self._consumer = threading.get_ident()
        yield from _consume(self)

    def add_source(self, source: str | SourceSpec | FrameSource, timeout_s: float = 30.0) -> int:
        """Add a source to the running pipeline (from any thread); returns its ``source_id``.

        Before :meth:`start` it joins the initial sources. A name already taken gets a suffix.

        Raises:
            StreamError: It cannot be opened, its outputs cannot be written, or the pipeline is closed.
        """
        spec = _as_spec(source)
        if not self._started:
            self.specs = unique_names([*self.specs, spec])
            _check_count(len(self.specs), self.config)
            return len(self.specs) - 1
        return int(self._request("add", spec, timeout_s))

    def remove_source(self, source_id: int, timeout_s: float = 30.0) -> None:
        """Stop one source (from any thread): its outputs are finalised, the others go on.

        Raises:
            ConfigError: No such source, or it has ended already.
        """
        if not self._started:
            raise ConfigError("remove_source: the pipeline has not started")
        self._request("remove", source_id, timeout_s)

    def close(self, *, failed: bool = False) -> None:
        """Stop every thread and finalise every output (idempotent).

        Args:
            failed: Publish nothing (the run failed): earlier files with the outputs' names stay.
        """
        if self._closed:
            return
        self._closed = True
        for lane in self._lanes:
            lane.capture.close()
            if not lane.capture.started:
                lane.source.close()  # its thread would have: start() failed before it ran
            lane.summary.frames_captured = lane.capture.captured
            lane.summary.frames_dropped = lane.capture.dropped
            _never_up(lane.source, lane.summary)
        if self._inference is not None:
            self._inference.close()
        if self._outputs is not None:
            self._outputs.close()  # the frames handed to it are written first
            try:
                self._outputs.finished()
            except StreamError as err:
                log.error("%s", err)
                failed = True
        for lane in self._lanes:
            if failed or (lane.summary.interrupted and not self.options.publish_interrupted):
                lane.outputs.abort()  # a source that had already ended is closed: abort leaves it published
            else:
                lane.outputs.close()
        if self._window is not None:
            self._window.close()
        while True:  # nobody will serve what is still asked
            try:
                _, _, future = self._requests.get_nowait()
            except queue.Empty:
                break
            future.set_exception(ConfigError("the pipeline is closed"))

    # -- internals ------------------------------------------------------------------------------

    def _open(self, spec: SourceSpec) -> tuple[FrameSource, bool]:
        """The source, opened unless it is live (then True: its capture thread opens it)."""
        if spec.source is not None:
            if not spec.source.live:
                spec.source.open()  # a file-like object: bad input is refused now, as for files
            return spec.source, spec.source.live
        capture = self.config.capture
        if self._deadline is not None:
            # --max-seconds bounds the opening too: a port that accepts and never answers is given up by
            # then. Half a second at least, so a late source still gets a try; reconnects keep the bound.
            left_s = max(0.5, self._deadline - time.monotonic())
            capture = replace(capture, open_timeout_s=min(capture.open_timeout_s, left_s))
        source = open_source(spec.spec, capture, paced=spec.paced, defer_live=True)
        return source, isinstance(source, LiveSource)

    def _lane(self, source_id: int, spec: SourceSpec, source: FrameSource, open_first: bool) -> _Lane:
        config = self.config
        assert self.models is not None  # loaded by start()
        writer, events = _open_outputs(spec, source, config)
        max_frames = spec.max_frames or self.options.max_frames
        expected = None if source.live else source.frame_count
        if max_frames and not source.live:
            expected = min(max_frames, expected or max_frames)
        summary = RunSummary(source=source.name, source_id=source_id, name=spec.name, frames_expected=expected)
        outputs = SourceOutputs(source, summary, self.models.classifier.labels, writer, events,
                                bars=config.output.probability_bars, fps_overlay=config.output.fps_overlay,
                                uncertain_below=config.classifier.uncertain_below,
                                heads=self.models.classifier.contract.heads)
        stop = threading.Event()
        size = config.capture.live_buffer if source.live else config.capture.queue_size
        # The detector's scaling on the capture thread, unless most frames skip detection.
        prescale = getattr(self.models.detector, "prescale", None) if config.runtime.detect_every <= 1 else None
        capture = CaptureThread(source, size, stop, max_frames, source_id=source_id,
                                on_put=self._wake.set, open_first=open_first, prescale=prescale)
        tracker = IouTracker.from_config(config.tracking, still_images=isinstance(source, ImageSource))
        return _Lane(spec, source, outputs, tracker, capture, stop)

    def _tracker_of(self, source_id: int) -> IouTracker:
        return self._lanes[source_id].tracker

    def _request(self, what: str, arg: Any, timeout_s: float) -> Any:
        if self._closed:
            raise ConfigError("the pipeline is closed")
        future: concurrent.futures.Future = concurrent.futures.Future()
        if threading.get_ident() == self._consumer:
            self._serve(what, arg, future)  # asked from inside the loop: no one else would serve it
        else:
            self._requests.put((what, arg, future))
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise ConfigError(f"{what} source: the pipeline did not answer within {timeout_s:g} s") from None

    def _serve_requests(self) -> None:
        while True:
            try:
                what, arg, future = self._requests.get_nowait()
            except queue.Empty:
                return
            self._serve(what, arg, future)

    def _serve(self, what: str, arg: Any, future: concurrent.futures.Future) -> None:
        """Add or remove a source, on the consuming thread (the only one that changes the lanes)."""
        try:
            if what == "add":
                future.set_result(self._add(arg))
            else:
                self._remove(int(arg))
                future.set_result(None)
        except BaseException as err:
            future.set_exception(err)

    def _add(self, spec: SourceSpec) -> int:
        assert self._inference is not None
        _check_count(sum(1 for lane in self._lanes if not lane.outputs.closed) + 1, self.config)
        spec = unique_names([lane.spec for lane in self._lanes] + [spec])[-1]
        source, open_first = self._open(spec)
        try:
            lane = self._lane(len(self._lanes), spec, source, open_first)
        except BaseException:
            source.close()
            raise
        self._lanes.append(lane)  # before the mux sees it: the tracker must be there
        self._inference.mux.add(lane.summary.source_id, lane.capture.frames)
        lane.capture.start()
        source_added(self.sinks, lane.summary)
        log.info("source %s added: %s", lane.summary.source_id, lane.summary.source)
        return lane.summary.source_id

    def _remove(self, source_id: int) -> None:
        assert self._inference is not None
        if not 0 <= source_id < len(self._lanes) or self._lanes[source_id].ending:
            raise ConfigError(f"no running source {source_id}")
        lane = self._lanes[source_id]
        self._inference.mux.retire(source_id)
        lane.capture.close()
        if self._end(lane, EndOfStream("removed", warning="removed", source_id=source_id)):
            for sink in self.sinks:
                sink.on_source_end(lane.summary)

    def _end(self, lane: _Lane, marker: EndOfStream | StageError) -> bool:
        """Finalise a source's outputs now (True), or after the frames its output thread still holds."""
        lane.ending = True
        others = len(self._lanes) > 1
        if self._outputs is None:
            _end_source(lane.outputs, marker, others=others)
            return True
        self._outputs.submit(lane.summary.source_id, lambda: _end_source(lane.outputs, marker, others=others),
                             ("ended", lane, None))
        return False


def _as_spec(source: str | SourceSpec | FrameSource) -> SourceSpec:
    if isinstance(source, SourceSpec):
        return source
    if isinstance(source, str):
        return SourceSpec(source)
    return SourceSpec(source.name, source=source)


def _check_count(n: int, config: Config) -> None:
    if n > config.capture.max_sources:
        # Each file source buffers up to capture.queue_size decoded frames: 200 sources took 15 GB.
        raise ConfigError(f"{n} sources in one process: more than capture.max_sources "
                          f"({config.capture.max_sources}); raise it in a --config file if the memory is "
                          "there (each video file buffers up to capture.queue_size frames), or split "
                          "the sources over several runs")


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


def _window(sources: list[FrameSource], options: RunOptions) -> WindowSink | None:
    # Default window: a webcam on a machine with a display (a camera URL usually runs headless).
    webcam = any(isinstance(s, LiveSource) and not s.is_url for s in sources)
    show = options.display if options.display is not None else (webcam and display_available())
    if not show:
        return None
    title = sources[0].name if len(sources) == 1 else f"{len(sources)} sources"
    return WindowSink(f"emostream - {title}")


def _consume(pipeline: Pipeline) -> Iterator[FrameResult]:
    """The demux and render/record stage, on the calling thread (a window must live on the main thread).

    Each result goes to its source's outputs (on this thread, or on the output pool's thread of
    that source), then to the sinks, then to the caller.
    """
    assert pipeline._inference is not None
    options, lanes, sinks, pool = pipeline.options, pipeline._lanes, pipeline.sinks, pipeline._outputs
    results = pipeline._inference.results
    t_start = time.perf_counter()
    draw = any(getattr(sink, "wants_images", True) for sink in sinks)

    def written(item: FrameResult, lane: _Lane) -> bool:
        """The outputs took ``item``: give it to the sinks; True: a sink asks to stop."""
        stop = False
        for sink in sinks:
            sink.on_result(item, lane.summary)
            stop = stop or getattr(sink, "wants_stop", False)
        return stop

    def ended(lane: _Lane) -> None:
        for sink in sinks:
            sink.on_source_end(lane.summary)

    stop = False
    while not stop:
        for kind, lane, item in pool.finished() if pool is not None else ():
            if kind == "ended":
                ended(lane)
                continue
            stop = written(item, lane)
            yield item
            if stop:
                break
        if stop:
            break
        pipeline._serve_requests()
        if options.max_seconds is not None and time.perf_counter() - t_start >= options.max_seconds:
            break
        if options.interrupt is not None and options.interrupt.is_set():
            for lane in lanes:
                if not lane.ending:  # a source that ended before the interrupt is complete
                    lane.summary.interrupted = True
            break
        try:
            got = results.get(timeout=_POLL_S if pool is None or not pool.pending else _POOL_POLL_S)
        except queue.Empty:
            continue
        if isinstance(got, FrameResult):
            lane = lanes[got.frame.source_id]
            if lane.ending:
                continue  # removed while its last frames were in flight
            if pool is not None:
                pool.submit(lane.summary.source_id, functools.partial(lane.outputs.write, got, draw=draw),
                            ("written", lane, got))
                continue
            lane.outputs.write(got, draw=draw)
            stop = written(got, lane)
            yield got
            if stop:
                break
        elif got.source_id is None:  # the inference stage itself
            if isinstance(got, StageError):
                raise got.error
            break
        elif not lanes[got.source_id].ending and pipeline._end(lanes[got.source_id], got):
            ended(lanes[got.source_id])
    if pool is not None and not stop:  # what the output threads still hold, then its results
        while pool.pending:
            for kind, lane, item in pool.finished(wait_s=_POLL_S):
                if kind == "ended":
                    ended(lane)
                else:
                    written(item, lane)
                    yield item


def _end_source(outputs: SourceOutputs, marker: EndOfStream | StageError, *, others: bool = True) -> None:
    """One source ended: finalise its outputs now; a failure is kept in its summary, the others go on.

    A source that dies mid-run (a camera past its reconnect budget) still publishes what it
    recorded, complete up to the outage, as a truncated file does; only a failure of the
    outputs or of the whole run publishes nothing (:meth:`SourceOutputs.abort`).
    """
    if isinstance(marker, StageError):
        err = marker.error
        if not isinstance(err, StreamError):
            raise err  # a bug, not a bad source: stop everything
        outputs.summary.error = err
        if others:  # the others go on: say it now; a lone source's error is the run's one error line
            log.warning("source %s failed: %s", outputs.summary.source, err)
    else:
        outputs.summary.warning = marker.warning
    outputs.close()
