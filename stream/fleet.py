"""Camera fleets on Ray: groups of live sources on actors across a cluster; logs and health on the driver.

    driver (emostream run --sources cams.yaml --ray)            Ray actors, spread over the nodes
    <out-dir>/<name>.events.jsonl per camera  <-- poll(acked) -  FleetWorker: models loaded once, one
    health lines, the final summaries              every 0.5 s  Pipeline over its group of cameras;
    a dead actor -> a new one, same cameras,                    FleetTap (a Sink) keeps records
      from the first frame each log lacks                       until the driver has written them

Each actor runs the engine of "many sources in one run" (:class:`stream.pipeline.Pipeline`)
over ``sources_per_worker`` cameras; the driver pulls their event records with
:meth:`FleetWorker.poll` and writes every camera's event log itself
(:class:`stream.render.EventLog`), so the logs are in one place whatever node ran the camera.
Actors write nothing: annotated video is off for fleets.

What is guaranteed, per camera, by its frame index (every captured frame has one):

- **Written once, in order.** The driver writes a frame's record only if its index is past the
  last one the log has; a record that comes again (an answer sent twice, a replay) is not
  written twice.
- **Kept until written.** Every poll carries, per camera, the last frame index written; the
  actor keeps each record until then, so an answer the driver did not take (the stop of a run
  with a poll in flight) is sent again. The buffer holds :data:`BUFFER_RECORDS`: if the driver
  falls that far behind, the oldest records are dropped, counted, logged, shown in the health
  line and the camera's summary (``FleetResult.records_lost``).
- **A dead actor loses nothing that can be had again.** An actor that dies (killed, out of
  memory, node lost) is replaced by a new one, possibly on another node, which starts each of
  its cameras at the first frame index the log lacks. A video file (``paced: true`` ones
  included) is played again from its start and the frames the log has are skipped (read and
  run through the models, but not sent: a paced file plays them at its frame rate, so it
  takes as long as it had played to get back), so its log has every frame index exactly once,
  each with the file's own media time (but for frames a paced file drops, as a camera does,
  when its actor falls behind its frame rate: counted as dropped); the tracker starts afresh
  at the resumed frame. A live camera (a webcam, a stream) cannot give back past frames: what
  the dead actor had not sent (at most one poll's worth) and the frames of the outage are
  gone; its frame indexes go on from the last one written and ``t`` keeps growing by the
  outage's length. Either way the first record after the outage carries ``gap_s`` (seconds
  without records) and ``resumed: true``.

A group whose actor died :data:`MAX_RESTARTS` times ends with an error. A source that fails
ends alone, as in one process; a camera that is down at start is retried on its actor like one
that dies later, while the group's others run.

Cameras come and go while the fleet runs: with a sources file, setting ``FleetOptions.reload``
(SIGHUP in ``emostream run``) re-reads it as one process does (:mod:`stream.control`: matched by
name; a camera no longer listed is removed from its actor, its log finalised; a new entry starts
on new actors, ``sources_per_worker`` to each; every other camera is left alone).

The driver's own sinks (``run_fleet(..., sinks=[...])``: the MQTT publisher, the Prometheus
metrics) see every camera as a pipeline's sinks see its sources: each record the driver writes
comes to them as a :class:`~stream.records.FrameResult` (its faces and event record, no pixels).

Imported only with ``--ray``; ``ray`` itself is imported inside the functions.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stream.capture.live import is_stream_url
from stream.capture.sources import is_remote_file
from stream.capture.spec import SourceSpec, load_sources, unique_names
from stream.cluster import ModelActor
from stream.config import Config
from stream.contract import printable
from stream.control import ENDED, FAILED, REMOVED, RUNNING, ReloadResult, check_openable, free_name, reload_plan
from stream.errors import ConfigError, ModelError, StreamError
from stream.logtap import WarningTap
from stream.redact import redact_url
from stream.sinks.base import source_added
from stream.summary import RunSummary

__all__ = ["ACTOR_PREFIX", "MAX_RESTARTS", "FleetOptions", "FleetResult", "FleetTap", "FleetWorker",
           "run_fleet"]

log = logging.getLogger(__name__)

#: Name prefix of the fleet's actors (in the ``emostream`` namespace; ``ray.util.list_named_actors`` finds them).
ACTOR_PREFIX = "emostream-fleet-"
#: Deaths of one group's actor after which its cameras end with an error.
MAX_RESTARTS = 5
#: Event records an actor keeps for the driver; older ones are dropped (and counted) if the driver falls behind.
BUFFER_RECORDS = 20_000
_STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class FleetOptions:
    """Choices of a fleet run.

    Attributes:
        ray: ``""``: ``RAY_ADDRESS`` or a new local Ray; else the cluster's address.
        sources_per_worker: Cameras per actor (one pipeline, one batched inference stage each).
        cpus_per_worker: CPUs each actor asks for.
        gpus_per_worker: GPU fraction each actor asks for (0: none).
        max_seconds: Stop after this many seconds.
        max_frames: Stop each camera after this many frames (all its actors together).
        interrupt: Set (by a signal handler) to stop every actor and finalise the logs.
        poll_s: How often the driver pulls records and health from the actors.
        health_every_s: How often ``on_health`` gets a line per camera (None: never).
        sources_file: The sources file a reload re-reads (None: no reload).
        file_keys: ``{camera id: its name in the sources file}`` of the cameras that came from it
            (:func:`stream.control.file_keys`).
        reload: Set (by a SIGHUP handler) to re-read ``sources_file``; the driver clears it.
    """

    ray: str = ""
    sources_per_worker: int = 4
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_seconds: float | None = None
    max_frames: int | None = None
    interrupt: threading.Event | None = None
    poll_s: float = 0.5
    health_every_s: float | None = 30.0
    sources_file: Path | None = None
    file_keys: Mapping[int, str] = field(default_factory=dict)
    reload: threading.Event | None = None


@dataclass
class FleetResult:
    """What a fleet run did: one summary per camera (``source_id`` order) and the actor restarts of each."""

    summaries: list[RunSummary]
    restarts: list[int]
    mode: str
    workers: int
    records_lost: int = 0


# -- The actor side ---------------------------------------------------------------------------------


class FleetTap:
    """The sink inside an actor: turns results into event records kept until the driver has written them.

    Records carry the camera's frame index in its whole log (not this actor's run): a replayable
    camera (a file) is read again from its start and the frames the log already has are skipped;
    a live camera's frames are numbered on from ``resume_from``. A record stays in the bounded
    buffer until the driver acknowledges its frame (:meth:`take`), so an answer the driver never
    got is sent again; when the buffer is full the oldest record is dropped and counted.

    Args:
        ids: The cameras' ids in the whole fleet, in the actor pipeline's ``source_id`` order.
        names: Their names (for matching log warnings to a camera).
        labels: The classifier's labels.
        uncertain_below: As ``classifier.uncertain_below``.
        resume_from: Per camera, the first frame index the driver has not written (None: all 0).
        replayable: Per camera, whether it plays from its start again (a file; see :func:`replayable`).
    """

    wants_images = False  # the driver gets records, not pictures: the pipeline need not draw

    def __init__(self, ids: Sequence[int], names: Sequence[str], labels: Sequence[str], *,
                 uncertain_below: float = 0.0, resume_from: Sequence[int] | None = None,
                 replayable: Sequence[bool] | None = None) -> None:
        self.ids = list(ids)
        self.names = list(names)
        self.labels = tuple(labels)
        self.uncertain_below = uncertain_below
        self.resume_from = list(resume_from) if resume_from is not None else [0] * len(self.ids)
        self.replayable = list(replayable) if replayable is not None else [False] * len(self.ids)
        self.records: deque[dict[str, Any]] = deque()
        self.ended: dict[int, dict[str, str]] = {}
        self.last_error: dict[int, str] = {}
        self.lost: dict[int, int] = {}  # per camera, records dropped from the full buffer (all this actor's run)
        self.replayed = [0] * len(self.ids)  # per camera, frames read again and skipped (already in the log)
        self.started = threading.Event()  # the pipeline has opened its sources
        self._lock = threading.Lock()

    def on_start(self, summaries: list[RunSummary]) -> None:
        self.started.set()

    def on_result(self, result: Any, summary: RunSummary) -> None:
        from stream.render.record import frame_event

        i = summary.source_id
        index = self.frame_index(i, result.frame.index)
        if index is None:
            self.replayed[i] += 1
            return
        record = dict(frame_event(result, self.labels, uncertain_below=self.uncertain_below))  # shared: a copy
        record["source_id"] = self.ids[i]
        record["frame"] = index
        record["_wall"] = time.time()  # for fps and the outage's length; the driver drops it
        with self._lock:
            if len(self.records) >= BUFFER_RECORDS:
                gid = self.records.popleft()["source_id"]
                self.lost[gid] = self.lost.get(gid, 0) + 1
            self.records.append(record)

    def frame_index(self, i: int, local: int) -> int | None:
        """The frame index in camera ``i``'s log of this run's frame ``local``; None: the log has it already."""
        if self.replayable[i]:
            return local if local >= self.resume_from[i] else None
        return self.resume_from[i] + local

    def counts(self, i: int, captured: int, dropped: int) -> tuple[int, int]:
        """This run's capture counts of camera ``i`` in its log's terms: (frame index after the last
        captured frame, frames dropped among those the log did not have yet)."""
        if not self.replayable[i]:
            return self.resume_from[i] + captured, dropped
        # A replay's frames the tap never saw were dropped too (the newest frame wins): not the log's drops.
        replay_drops = max(0, min(captured, self.resume_from[i]) - self.replayed[i])
        return captured, max(0, dropped - replay_drops)

    def on_source_end(self, summary: RunSummary) -> None:
        with self._lock:
            self.ended[self.ids[summary.source_id]] = {
                "error": redact_url(str(summary.error)) if summary.error is not None else "",
                "warning": redact_url(summary.warning)}

    def note_log(self, record: logging.LogRecord) -> None:
        """A library warning that names a camera becomes its last error (reconnects, stalls)."""
        message = redact_url(record.getMessage())
        with self._lock:
            for gid, name in zip(self.ids, self.names, strict=True):
                if f"'{name}'" in message or len(self.ids) == 1:
                    self.last_error[gid] = message

    def take(self, acked: dict[int, int] | None = None) -> dict[str, Any]:
        """Forget the records the driver has written, then return every record it has not.

        Args:
            acked: Per camera id, the last frame index the driver has written: records up to it
                are dropped from the buffer, the rest are (sent again if they were sent before).

        Returns:
            ``records`` (in order), ``ended`` cameras and ``last_error`` (new since the last call),
            ``lost`` (per camera, records dropped from the full buffer in this actor's run).
        """
        acked = acked or {}
        with self._lock:
            if acked:
                self.records = deque(r for r in self.records if r["frame"] > acked.get(r["source_id"], -1))
            ended, self.ended = self.ended, {}
            return {"records": list(self.records), "ended": ended, "last_error": dict(self.last_error),
                    "lost": dict(self.lost)}


def replayable(spec: SourceSpec) -> bool:
    """Whether a new actor can play ``spec`` again from its start: a video file (paced or not,
    local or an ``http(s)://`` file), not a webcam or a stream whose past frames are gone."""
    return is_remote_file(spec.spec) or not (spec.spec.isdigit() or is_stream_url(spec.spec))


class FleetWorker(ModelActor):
    """The Ray actor: models loaded once, then one pipeline over its cameras in a thread.

    Args:
        config: Configuration (the driver's, with ``output.video`` and ``output.events`` off).
    """

    def __init__(self, config: Config) -> None:
        super().__init__(config)  # a models error is reported by start(): the driver ends the run with it
        self.tap: FleetTap | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pipeline: Any = None
        self._summaries: list[RunSummary] = []
        self._failure = ""

    def cameras(self) -> list[str]:
        """The names of this actor's cameras (empty before :meth:`start`)."""
        return list(self.tap.names) if self.tap is not None else []

    def start(self, ids: list[int], specs: list[SourceSpec], resume_from: list[int] | None = None) -> dict[str, Any]:
        """Start the pipeline over these cameras in a thread; ``{"where": ...}`` or ``{"error": ...}``.

        Args:
            ids: The cameras' ids in the fleet.
            specs: Their sources.
            resume_from: Per camera, the first frame index its log does not have (a new actor
                after one died): a file is played again and the frames before it skipped, a
                live camera's frames are numbered on from it.
        """
        if self.error:
            return {"error": self.error}
        from stream.pipeline import Pipeline, RunOptions

        tap = FleetTap(ids, [s.name for s in specs], self.models.classifier.labels,
                       uncertain_below=self.config.classifier.uncertain_below, resume_from=resume_from,
                       replayable=[replayable(s) for s in specs])
        self.tap = tap
        logging.getLogger("stream").addHandler(WarningTap(tap.note_log))
        pipeline = Pipeline(specs, self.config, RunOptions(display=False, interrupt=self._stop), self.models,
                            sinks=[tap])
        self._pipeline = pipeline

        def work() -> None:
            try:
                self._summaries = pipeline.run()
            except StreamError as err:
                self._failure = redact_url(str(err))
            except Exception as err:  # a bug: the driver ends these cameras with it, the others go on
                log.exception("the pipeline failed")
                self._failure = f"{type(err).__name__}: {redact_url(str(err))}"

        self._thread = threading.Thread(target=work, name="emostream-fleet-pipeline", daemon=True)
        self._thread.start()
        return {"where": self.where()}

    def poll(self, acked: dict[int, int] | None = None) -> dict[str, Any]:
        """The records the driver has not written, ended cameras and last errors; once the pipeline
        is over, ``done`` and the counts.

        Args:
            acked: Per camera id, the last frame index the driver has written (see :meth:`FleetTap.take`).
        """
        if self.tap is None:
            return {"records": [], "ended": {}, "last_error": {}, "lost": {}, "done": False}
        done = self._thread is not None and not self._thread.is_alive()
        answer = self.tap.take(acked)  # after reading ``done``: nothing is written after the thread ends
        answer["done"] = done
        if done:
            answer["failure"] = self._failure
            answer["counts"] = {self.tap.ids[s.source_id]: self.tap.counts(s.source_id, s.frames_captured,
                                                                           s.frames_dropped)
                                for s in self._summaries}
        return answer

    def remove(self, gid: int) -> dict[str, Any]:
        """Stop camera ``gid`` (its last records come with the next polls, then its end); the others go on.

        Returns ``{}``, or ``{"error": ...}`` when it is not running here (ended already, or never started).
        """
        tap, thread = self.tap, self._thread
        if tap is None or thread is None or gid not in tap.ids:
            return {"error": f"camera {gid} is not on this worker"}
        while not tap.started.wait(0.1):  # a remove that came right after start: once the sources are open
            if not thread.is_alive():
                return {"error": "its pipeline has ended"}
        try:
            self._pipeline.remove_source(tap.ids.index(gid))
        except StreamError as err:
            return {"error": redact_url(str(err))}
        return {}

    def stop(self, acked: dict[int, int] | None = None) -> dict[str, Any]:
        """End the pipeline (its sources closed), then the last :meth:`poll`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_STOP_TIMEOUT_S - 5)
        return self.poll(acked)


# -- The driver side --------------------------------------------------------------------------------


@dataclass
class _Camera:
    """One camera as the driver knows it: its log, its summary, where its numbering stands."""

    gid: int
    spec: SourceSpec
    summary: RunSummary
    key: str | None = None  # its name in the sources file, when it came from there (a reload matches it)
    removing: bool = False  # a reload removed it: its actor was told to stop it
    told_end: bool = False  # the driver's sinks were told it ended
    events_path: Path | None = None
    events: Any = None  # its EventLog, or None when event logs are off
    t_start: float | None = None
    max_frames: int | None = None
    replayable: bool = False  # a file: a new actor plays it again from the first frame the log lacks
    ended: bool = False
    restarts: int = 0
    last_error: str = ""
    where: str = ""
    # The log: the next frame index it takes (frames at or below next_frame - 1 are written, never again).
    next_frame: int = 0
    t_base: float = 0.0  # a live camera's media time goes on across actors (a new one starts at 0)
    last_t: float = 0.0
    last_wall: float | None = None
    resumed: bool = False
    duplicates: int = 0  # records sent again (an answer the driver had, or a replay) and not written twice
    # This actor's run: frames from run_start on; frame indexes count every captured frame, so drops show.
    run_open: bool = False
    run_start: int = 0
    run_processed: int = 0
    run_lost: int = 0
    captured_end: int = 0
    dropped_before: int = 0
    lost_before: int = 0
    recent_wall: deque = field(default_factory=lambda: deque(maxlen=60))

    @property
    def acked(self) -> int:
        """The last frame index written (-1: none): sent with every poll, so the actor forgets those records."""
        return self.next_frame - 1

    @property
    def lost(self) -> int:
        return self.lost_before + self.run_lost

    def begin_run(self) -> None:
        """A new actor takes the camera from the first frame the log lacks."""
        self.run_open = True
        self.run_start = self.next_frame
        self.run_processed = self.run_lost = 0

    def end_run(self, counts: tuple[int, int] | None) -> None:
        """This actor's run of the camera is over: fold its counts into the totals.

        Args:
            counts: The run's (frame index after its last captured frame, frames it dropped), in the
                log's numbering (:meth:`FleetTap.counts`); None when the actor died: the frames it
                captured after the last written one are played again (a file) or lost with it
                (a live camera: the outage that ``gap_s`` shows).
        """
        if not self.run_open:
            return
        self.run_open = False
        if counts is not None:
            end, dropped = counts
            self.captured_end = max(self.captured_end, self.next_frame, end)
            self.dropped_before += dropped
        else:
            self.captured_end = max(self.captured_end, self.next_frame)
            self.dropped_before += self._run_holes()
        self.lost_before += self.run_lost
        self.run_lost = 0

    def _run_holes(self) -> int:
        """Frames of this run missing between the ones written (dropped before inference or from the buffer)."""
        return max(0, self.next_frame - self.run_start - self.run_processed) if self.run_open else 0

    @property
    def dropped(self) -> int:
        return self.dropped_before + self._run_holes()

    def write(self, record: dict[str, Any]) -> bool:
        """Write the record unless the log has its frame already; True if written."""
        if int(record["frame"]) < self.next_frame:
            self.duplicates += 1
            return False
        wall = float(record.pop("_wall"))
        if self.resumed:
            self.resumed = False
            gap_s = max(0.0, wall - self.last_wall) if self.last_wall is not None else 0.0
            if not self.replayable:  # a file's frames keep their own media time
                self.t_base = self.last_t + gap_s - float(record["t"])
            record["gap_s"] = round(gap_s, 3)
            record["resumed"] = True
        self.run_processed += 1
        record["frame"] = int(record["frame"])
        record["t"] = round(float(record["t"]) + self.t_base, 4)
        self.next_frame, self.last_t, self.last_wall = record["frame"] + 1, record["t"], wall
        self.recent_wall.append(wall)
        if self.events is not None:
            self.events.write_record(record)
        s = self.summary
        s.frames_processed += 1
        s.faces += len(record["faces"])
        s.label_counts.update(face["label"] for face in record["faces"])
        s.latencies.add(float(record["latency_ms"]))
        return True

    def health(self) -> str:
        s = self.summary
        span = self.recent_wall[-1] - self.recent_wall[0] if len(self.recent_wall) > 1 else 0.0
        fps = (len(self.recent_wall) - 1) / span if span > 0 else 0.0
        if self.recent_wall and time.time() - self.recent_wall[-1] > 5.0:
            fps = 0.0  # no frame for a while: not the fps of a minute ago
        dropped = self.dropped
        state = "ended" if self.ended else (f"on {self.where}" if self.where else "waiting for a worker")
        line = (f"[{self.gid}] {s.source} {state}: {s.frames_processed} frames, {dropped} dropped, {fps:.1f} fps, "
                f"latency p50 {s.latency_percentile(50):.0f} ms p95 {s.latency_percentile(95):.0f} ms")
        if self.restarts:
            line += f", {self.restarts} restart(s)"
        if self.lost:
            line += f", {self.lost} record(s) lost (its worker's buffer was full)"
        if self.last_error:
            line += f"; last error: {self.last_error}"
        return line


@dataclass
class _Group:
    cameras: list[_Camera]
    actor: Any = None
    start_ref: Any = None
    poll_ref: Any = None
    deaths: int = 0
    done: bool = False


def _prepare(specs: Sequence[SourceSpec], config: Config, options: FleetOptions) -> tuple[list[_Camera], Config]:
    """Names, log paths and the actors' config; refuses what a fleet cannot do."""
    specs = unique_names(specs)
    for spec in specs:
        _refuse_video(spec)
    # Actors run in another folder, maybe on another node: every path they get is absolute.
    worker_config = config.with_overrides({
        "classifier.model": config.classifier.model.expanduser().absolute(),
        "detector.model": config.detector.model.expanduser().absolute(),
        "detector.yunet_model": config.detector.yunet_model.expanduser().absolute(),
        "output.video": False, "output.events": False, "output.progress": False, "output.display": "off"})
    cameras = [_camera(i, spec, config, options) for i, spec in enumerate(specs)]
    return cameras, worker_config


def _refuse_video(spec: SourceSpec) -> None:
    if spec.output is not None:
        raise ConfigError(f"source '{spec.name}': 'output' is set, but camera fleets on Ray write no annotated "
                          f"video (event logs only); remove it or run without --ray")


def _camera(gid: int, spec: SourceSpec, config: Config, options: FleetOptions) -> _Camera:
    events = spec.events or (config.output.dir / f"{spec.name}.events.jsonl" if config.output.events else None)
    return _Camera(gid, replace(spec, output=None, events=None, max_frames=None),
                   RunSummary(source=redact_url(spec.name), source_id=gid),
                   key=options.file_keys.get(gid),
                   events_path=Path(events).expanduser().absolute() if events is not None else None,
                   max_frames=spec.max_frames or options.max_frames, replayable=replayable(spec))


def run_fleet(specs: Sequence[SourceSpec], config: Config, options: FleetOptions,
              on_health: Callable[[list[str]], None] | None = None,
              on_reload: Callable[[str], None] | None = None, sinks: Sequence[Any] = ()) -> FleetResult:
    """Run the cameras on Ray actors until they end, ``max_seconds`` pass or the interrupt is set.

    Args:
        specs: The cameras (live sources; ``paced`` files play as cameras).
        config: Configuration; ``output.dir`` holds the default event logs, written here on the driver.
        options: Fleet choices.
        on_health: Called with one line per camera every ``options.health_every_s``.
        on_reload: Called with one line for each reload of the sources file that changed something
            or not (a bad file is one warning line, and changes nothing).
        sinks: Told of every camera's start, records and end (:class:`stream.sinks.Sink`, on this
            thread; no pixels: declare ``wants_images = False``).

    Returns:
        One summary per camera, added ones included (its ``error`` set if it failed), and the
        restarts of each.

    Raises:
        ConfigError: Ray is missing or unreachable, or a source asks for what a fleet cannot do.
        OutputError: An event log cannot be written.
        ModelError: The actors could not load the models.
    """
    from stream.cluster import NAMESPACE, connect
    from stream.render.record import EventLog

    cameras, worker_config = _prepare(specs, config, options)
    logs_open: list[Any] = []
    try:
        for cam in cameras:
            if cam.events_path is not None:
                cam.events = EventLog(cam.events_path)
                logs_open.append(cam.events)
    except BaseException:
        for events in logs_open:
            events.abort()
        raise
    per = max(1, options.sources_per_worker)
    groups = [_Group(cameras[i:i + per]) for i in range(0, len(cameras), per)]
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    started = False
    failed = True
    interrupt = options.interrupt or threading.Event()
    result = FleetResult([c.summary for c in cameras], [0] * len(cameras),
                         f"ray {options.ray or os.environ.get('RAY_ADDRESS') or 'local'}", len(groups))
    try:
        started = connect(options.ray)
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():  # ray.init replaces SIGTERM with sys.exit(15): ours ends like Ctrl-C
                signal.signal(sig, handler)
        import ray

        _Driver(ray, NAMESPACE, groups, cameras, worker_config, config, options, interrupt, result,
                on_health, on_reload, list(sinks)).run()
        failed = False
    except KeyboardInterrupt:  # a second Ctrl-C: leave now, logs finalised below
        for cam in cameras:
            cam.summary.interrupted = True
        failed = False
    finally:
        t_end = time.perf_counter()
        for cam in cameras:
            if cam.events is not None:
                if failed:
                    cam.events.abort()
                else:
                    cam.events.close()
                    if cam.events.published:
                        cam.summary.outputs = [cam.events.path]
            cam.summary.wall_s = t_end - cam.t_start if cam.t_start is not None else 0.0
            cam.end_run(None)  # a run still open (the driver left early): what was written is what counts
            cam.summary.frames_captured = max(cam.captured_end, cam.next_frame)
            cam.summary.frames_dropped = cam.dropped
            if cam.lost:
                lost = (f"{cam.lost} event record(s) lost: its worker's buffer ({BUFFER_RECORDS} records) was "
                        "full (the driver fell behind)")
                cam.summary.warning = f"{cam.summary.warning}; {lost}" if cam.summary.warning else lost
        result.summaries = [c.summary for c in cameras]  # added ones too
        result.restarts = [c.restarts for c in cameras]
        result.records_lost = sum(c.lost for c in cameras)
        result.workers = len(groups)
        if started:
            import ray

            ray.shutdown()
    return result


def _finish(cam: _Camera) -> None:
    """Publish an ended camera's event log now (as one process does), not when the whole fleet ends."""
    if cam.events is not None:
        cam.events.close()
        if cam.events.published:
            cam.summary.outputs = [cam.events.path]
        cam.events = None


def _state(cam: _Camera) -> str:
    """The camera's state in :mod:`stream.control`'s terms (what a reload goes by)."""
    if cam.removing or cam.summary.warning == "removed":
        return REMOVED
    if not cam.ended:
        return RUNNING
    return FAILED if cam.summary.error is not None else ENDED


def _acked(group: _Group) -> dict[int, int]:
    """Per camera of the group, the last frame index its log has."""
    return {c.gid: c.acked for c in group.cameras}


class _Driver:
    """The driver's loop: start actors, pull records, replace dead actors, stop everything at the end."""

    def __init__(self, ray: Any, namespace: str, groups: list[_Group], cameras: list[_Camera], config: Config,
                 out_config: Config, options: FleetOptions, interrupt: threading.Event, result: FleetResult,
                 on_health: Callable[[list[str]], None] | None,
                 on_reload: Callable[[str], None] | None, sinks: list[Any]) -> None:
        self.ray = ray
        self.namespace = namespace
        self.groups = groups  # a reload appends the new cameras' groups
        self.cameras = cameras  # every camera, in id order; a reload appends to it
        self.config = config  # the actors' config
        self.out_config = out_config  # the driver's: where an added camera's log goes
        self.options = options
        self.interrupt = interrupt
        self.on_health = on_health
        self.on_reload = on_reload
        self.sinks = sinks
        self.result = result
        self.remote = ray.remote(FleetWorker)
        self.run_id = uuid.uuid4().hex[:8]
        self.made = 0

    def run(self) -> None:
        ray = self.ray
        from ray.exceptions import RayActorError

        cpus = float(ray.cluster_resources().get("CPU", 0))
        need = len(self.groups) * self.options.cpus_per_worker
        if need > cpus:
            log.warning("%d workers ask for %g CPUs but the cluster has %g: some cameras wait for a worker "
                        "(raise --sources-per-worker)", len(self.groups), need, cpus)
        t0 = time.perf_counter()
        for sink in self.sinks:
            sink.on_start([c.summary for c in self.cameras])
        for group in self.groups:
            for cam in group.cameras:
                cam.t_start = t0
            self._launch(group)
        next_health = t0 + (self.options.health_every_s or 0.0)
        try:
            while not all(g.done for g in self.groups):
                if self.options.max_seconds is not None and time.perf_counter() - t0 >= self.options.max_seconds:
                    break
                if self.interrupt.is_set():
                    for group in self.groups:
                        for cam in group.cameras:
                            cam.summary.interrupted = not cam.ended
                    break
                reload = self.options.reload
                if reload is not None and reload.is_set():
                    reload.clear()
                    self._reload()
                tick = time.perf_counter()
                for group in self.groups:
                    if not group.done and group.poll_ref is None:
                        group.poll_ref = group.actor.poll.remote(_acked(group))
                refs = [r for g in self.groups if not g.done for r in (g.start_ref, g.poll_ref) if r is not None]
                ray.wait(refs, num_returns=len(refs), timeout=self.options.poll_s)
                for group in self.groups:
                    if not group.done:
                        self._check(group, RayActorError)
                if self.on_health is not None and self.options.health_every_s and time.perf_counter() >= next_health:
                    next_health = time.perf_counter() + self.options.health_every_s
                    self.on_health([c.health() for g in self.groups for c in g.cameras])
                # Pace the polls: an actor answers at once, with whatever came since the last one.
                self.interrupt.wait(max(0.0, self.options.poll_s - (time.perf_counter() - tick)))
        finally:
            self._stop_all(RayActorError)

    def _reload(self) -> None:
        """Re-read the sources file: remove the cameras it no longer lists, start its new ones on new actors."""
        from stream.render.record import EventLog

        path = self.options.sources_file
        if path is None:
            log.warning("no sources file to reload: start with --sources FILE.yaml")
            return
        where = f"sources file '{printable(str(path))}' not reloaded"
        from_file = [c for c in self.cameras if c.key is not None]
        running = {c.key: c for c in from_file if _state(c) == RUNNING}
        try:
            wanted = [(s.name, s) for s in unique_names(load_sources(path))]
            new, gone = reload_plan(wanted, [(c.key, _state(c)) for c in from_file if c.key is not None])
            check_openable([spec for _, spec in new], where)
            for _, spec in new:
                _refuse_video(spec)
        except StreamError as err:
            log.warning("%s", err if str(err).startswith(where) else
                        f"{where} (the sources are left as they were): {err}")
            return
        taken = {c.spec.name for c in self.cameras}
        added: list[_Camera] = []
        try:
            for key, spec in new:
                name = key if key not in taken else free_name(key, taken)  # an ended camera's log keeps its name
                taken.add(name)
                cam = _camera(len(self.cameras) + len(added), replace(spec, name=name), self.out_config,
                              self.options)
                cam.key = key
                if cam.events_path is not None:
                    cam.events = EventLog(cam.events_path)
                added.append(cam)
        except StreamError as err:
            for cam in added:
                if cam.events is not None:
                    cam.events.abort()
            log.warning("%s (the sources are left as they were): %s", where, err)
            return
        result = ReloadResult(added=[c.spec.name for c in added],
                              unchanged=[c.spec.name for key, c in running.items() if key not in gone])
        for key in gone:
            cam = running[key]
            group = next(g for g in self.groups if cam in g.cameras)
            cam.removing = True
            if group.actor is not None:
                group.actor.remove.remote(cam.gid)  # its end comes back with a poll
            result.removed.append(cam.spec.name)
        t0 = time.perf_counter()
        per = max(1, self.options.sources_per_worker)
        for cam in added:
            cam.t_start = t0
        self.cameras.extend(added)
        for cam in added:
            source_added(self.sinks, cam.summary)
        for i in range(0, len(added), per):
            group = _Group(added[i:i + per])
            self.groups.append(group)
            self._launch(group)
        if self.on_reload is not None:
            self.on_reload(result.line(path))

    def _launch(self, group: _Group) -> None:
        self.made += 1
        name = f"{ACTOR_PREFIX}{self.run_id}-g{self.groups.index(group)}-{self.made}"
        group.actor = self.remote.options(
            name=name, namespace=self.namespace, num_cpus=self.options.cpus_per_worker,
            num_gpus=self.options.gpus_per_worker, max_restarts=0, scheduling_strategy="SPREAD",
        ).remote(self.config)
        alive = [c for c in group.cameras if not c.ended]
        for cam in alive:
            cam.begin_run()
        # max_frames bounds a camera's frame indexes: a file played again counts from its start,
        # a live camera's new actor from the first frame the log lacks.
        specs = [replace(c.spec, max_frames=(c.max_frames if c.replayable else c.max_frames - c.next_frame)
                         if c.max_frames else None) for c in alive]
        group.start_ref = group.actor.start.remote([c.gid for c in alive], specs, [c.next_frame for c in alive])
        group.poll_ref = None

    def _check(self, group: _Group, dead: type[BaseException]) -> None:
        ray = self.ray
        try:
            if group.start_ref is not None:
                if not ray.wait([group.start_ref], timeout=0)[0]:
                    return
                answer = ray.get(group.start_ref)
                group.start_ref = None
                if "error" in answer:
                    raise ModelError(answer["error"])
                for cam in group.cameras:
                    cam.where = answer["where"]
            if group.poll_ref is not None and ray.wait([group.poll_ref], timeout=0)[0]:
                answer = ray.get(group.poll_ref)
                group.poll_ref = None
                self._take(group, answer)
        except dead as err:
            self._replace(group, err)

    def _take(self, group: _Group, answer: dict[str, Any]) -> None:
        from stream.render.record import result_of_event

        by_id = {c.gid: c for c in group.cameras}
        for record in answer["records"]:
            cam = by_id[record["source_id"]]
            if cam.write(record) and self.sinks:  # each frame once: one the log has is not written again
                result = result_of_event(record, time.perf_counter())
                for sink in self.sinks:
                    sink.on_result(result, cam.summary)
        for gid, lost in answer["lost"].items():
            cam = by_id[gid]
            if lost > cam.run_lost:
                log.warning("camera %s: its fleet worker dropped %d event records: the driver fell behind",
                            cam.summary.source, lost - cam.run_lost)
                cam.run_lost = lost
        for gid, message in answer["last_error"].items():
            by_id[gid].last_error = message
        for gid, end in answer["ended"].items():
            cam = by_id[gid]
            cam.ended = True
            cam.summary.warning = end["warning"]
            if end["error"]:
                cam.summary.error = StreamError(end["error"])
                cam.last_error = end["error"]
                log.warning("camera %s failed: %s", cam.summary.source, end["error"])
            self._ended(cam)  # its records all came before its end: the log is complete
        if answer["done"]:
            counts = answer.get("counts", {})
            for cam in group.cameras:
                cam.end_run(counts.get(cam.gid))  # a camera that ended on an earlier actor has no open run
                if not cam.ended and answer.get("failure"):
                    cam.summary.error = StreamError(answer["failure"])
                    cam.last_error = answer["failure"]
                cam.ended = True
                self._ended(cam)
            if answer.get("failure"):
                log.warning("cameras %s failed: %s", ", ".join(c.summary.source for c in group.cameras),
                            answer["failure"])
            group.done = True
            self._kill(group)

    def _replace(self, group: _Group, err: BaseException) -> None:
        group.deaths += 1
        self._kill(group)
        for cam in group.cameras:
            cam.end_run(None)
            if cam.removing and not cam.ended:  # removed by a reload: not started again
                cam.ended = True
                cam.summary.warning = "removed"
                self._ended(cam)
            if not cam.ended and cam.max_frames is not None and cam.next_frame >= cam.max_frames:
                cam.ended = True  # its last frame is written: nothing left for a new actor
                self._ended(cam)
        alive = [c for c in group.cameras if not c.ended]
        names = ", ".join(c.summary.source for c in alive)
        for cam in alive:
            cam.where = ""
            cam.restarts += 1
            cam.resumed = True
            cam.last_error = f"its worker died ({type(err).__name__})"
        if not alive:
            group.done = True
        elif group.deaths > MAX_RESTARTS:
            log.warning("the worker of cameras %s died %d times: giving up on them", names, group.deaths)
            for cam in alive:
                cam.ended = True
                cam.summary.error = StreamError(f"camera '{cam.summary.source}': its worker died "
                                                f"{group.deaths} times")
                self._ended(cam)
            group.done = True
        else:
            log.warning("the worker of cameras %s died (%s); starting a new one", names, type(err).__name__)
            self._launch(group)

    def _ended(self, cam: _Camera) -> None:
        """A camera ended while the fleet runs: publish its log, tell the sinks (once)."""
        _finish(cam)
        if not cam.told_end:
            cam.told_end = True
            for sink in self.sinks:
                sink.on_source_end(cam.summary)

    def _kill(self, group: _Group) -> None:
        if group.actor is None:
            return
        try:
            self.ray.kill(group.actor, no_restart=True)
        except Exception as err:  # best effort: the cluster cleans up after the driver anyway
            log.debug("could not kill a fleet worker: %s", err)
        group.actor = None

    def _stop_all(self, dead: type[BaseException]) -> None:
        """Stop every actor's pipeline, take its last records, then kill it."""
        ray = self.ray
        stopping = {}
        for group in self.groups:
            if not group.done and group.actor is not None and group.start_ref is None:
                stopping[group.actor.stop.remote(_acked(group))] = group  # an answer in flight comes again
        if stopping:
            ray.wait(list(stopping), num_returns=len(stopping), timeout=_STOP_TIMEOUT_S)
        for ref, group in stopping.items():
            try:
                if ray.wait([ref], timeout=0)[0]:
                    self._take(group, ray.get(ref))
            except dead as err:
                log.debug("a fleet worker died while stopping: %s", err)
        for group in self.groups:
            self._kill(group)
            for cam in group.cameras:
                if not cam.ended:
                    cam.end_run(None)
                    cam.ended = True
                if not cam.told_end:  # the run's end (its log is finalised by run_fleet: maybe interrupted)
                    cam.told_end = True
                    for sink in self.sinks:
                        sink.on_source_end(cam.summary)
