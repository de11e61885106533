"""Camera fleets on Ray: groups of live sources on actors across a cluster; logs and health on the driver.

    driver (emostream run --sources cams.yaml --ray)            Ray actors, spread over the nodes
    <out-dir>/<name>.events.jsonl per camera  <-- poll() -----  FleetWorker: models loaded once, one
    health lines, the final summaries              every 0.5 s  Pipeline over its group of cameras;
    a dead actor -> a new one, same cameras                     FleetTap (an Observer) buffers records

Each actor runs the engine of "many sources in one run" (:class:`stream.pipeline.Pipeline`)
over ``sources_per_worker`` cameras and keeps their event records in a bounded buffer;
the driver pulls them with :meth:`FleetWorker.poll` and writes every camera's event log
itself (:class:`stream.render.EventLog`), so the logs are in one place whatever node ran
the camera. Actors write nothing: annotated video is off for fleets.

An actor that dies (killed, out of memory, node lost) is replaced by a new one, possibly
on another node, and its cameras resume there: their logs go on, frame numbers and media
time keep growing, and the first record after the outage carries ``gap_s`` (seconds
without records) and ``resumed: true``. Records still buffered in the dead actor (at
most one poll interval's worth) are lost. A group whose actor died :data:`MAX_RESTARTS`
times ends with an error. A source that fails ends alone, as in one process; a camera that
is down at start is retried on its actor like one that dies later, while the group's others run.

Imported only with ``--ray``; ``ray`` itself is imported inside the functions.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stream.capture.spec import SourceSpec, unique_names
from stream.config import Config
from stream.errors import ConfigError, ModelError, StreamError
from stream.logtap import WarningTap
from stream.redact import redact_url
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
    """The Observer inside an actor: turns results into event records for the driver (bounded buffer).

    Args:
        ids: The cameras' ids in the whole fleet, in the actor pipeline's ``source_id`` order.
        names: Their names (for matching log warnings to a camera).
        labels: The classifier's labels.
        uncertain_below: As ``classifier.uncertain_below``.
    """

    wants_images = False  # the driver gets records, not pictures: the pipeline need not draw


    def __init__(self, ids: Sequence[int], names: Sequence[str], labels: Sequence[str], *,
                 uncertain_below: float = 0.0) -> None:
        self.ids = list(ids)
        self.names = list(names)
        self.labels = tuple(labels)
        self.uncertain_below = uncertain_below
        self.records: deque[dict[str, Any]] = deque()
        self.ended: dict[int, dict[str, str]] = {}
        self.last_error: dict[int, str] = {}
        self.lost = 0
        self._lock = threading.Lock()

    def on_start(self, summaries: list[RunSummary]) -> None:
        pass

    def on_result(self, result: Any, summary: RunSummary) -> None:
        from stream.render.record import event_record

        record = event_record(result, self.labels, uncertain_below=self.uncertain_below)
        record["source_id"] = self.ids[summary.source_id]
        record["_wall"] = time.time()  # for fps and the outage's length; the driver drops it
        with self._lock:
            if len(self.records) >= BUFFER_RECORDS:
                self.records.popleft()
                self.lost += 1
            self.records.append(record)

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

    def take(self) -> dict[str, Any]:
        """Everything new since the last call."""
        with self._lock:
            records, self.records = list(self.records), deque()
            ended, self.ended = self.ended, {}
            lost, self.lost = self.lost, 0
            return {"records": records, "ended": ended, "last_error": dict(self.last_error), "lost": lost}


class FleetWorker:
    """The Ray actor: models loaded once, then one pipeline over its cameras in a thread.

    Args:
        config: Configuration (the driver's, with ``output.video`` and ``output.events`` off).
    """

    def __init__(self, config: Config) -> None:
        from stream.pipeline import load_models

        self.config = config
        self.error = ""
        self.tap: FleetTap | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._summaries: list[RunSummary] = []
        self._failure = ""
        try:
            self.models: Any = load_models(config)
        except StreamError as err:  # reported by start(): the driver ends the run with this message
            self.error = str(err)

    def pid(self) -> int:
        """The worker's process id."""
        return os.getpid()

    def where(self) -> str:
        """``host:pid``, for health lines."""
        return f"{socket.gethostname()}:{os.getpid()}"

    def cameras(self) -> list[str]:
        """The names of this actor's cameras (empty before :meth:`start`)."""
        return list(self.tap.names) if self.tap is not None else []

    def start(self, ids: list[int], specs: list[SourceSpec]) -> dict[str, Any]:
        """Start the pipeline over these cameras in a thread; ``{"where": ...}`` or ``{"error": ...}``."""
        if self.error:
            return {"error": self.error}
        from stream.pipeline import Pipeline, RunOptions

        tap = FleetTap(ids, [s.name for s in specs], self.models.classifier.labels,
                       uncertain_below=self.config.classifier.uncertain_below)
        self.tap = tap
        logging.getLogger("stream").addHandler(WarningTap(tap.note_log))
        pipeline = Pipeline(specs, self.config, RunOptions(display=False, interrupt=self._stop), self.models,
                            observers=[tap])

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

    def poll(self) -> dict[str, Any]:
        """New records, ended cameras and last errors; once the pipeline is over, ``done`` and the counts."""
        if self.tap is None:
            return {"records": [], "ended": {}, "last_error": {}, "lost": 0, "done": False}
        done = self._thread is not None and not self._thread.is_alive()
        answer = self.tap.take()  # after reading ``done``: nothing is written after the thread ends
        answer["done"] = done
        if done:
            answer["failure"] = self._failure
            answer["counts"] = {self.tap.ids[s.source_id]: (s.frames_captured, s.frames_dropped)
                                for s in self._summaries}
        return answer

    def stop(self) -> dict[str, Any]:
        """End the pipeline (its sources closed), then the last :meth:`poll`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_STOP_TIMEOUT_S - 5)
        return self.poll()


# -- The driver side --------------------------------------------------------------------------------


@dataclass
class _Camera:
    """One camera as the driver knows it: its log, its summary, where its numbering stands."""

    gid: int
    spec: SourceSpec
    summary: RunSummary
    events_path: Path | None = None
    events: Any = None  # its EventLog, or None when event logs are off
    t_start: float | None = None
    max_frames: int | None = None
    ended: bool = False
    restarts: int = 0
    last_error: str = ""
    where: str = ""
    # Numbering across actors: a resumed camera's frames and media time go on from where they stopped.
    frame_base: int = 0
    t_base: float = 0.0
    next_frame: int = 0
    last_t: float = 0.0
    last_wall: float | None = None
    resumed: bool = False
    # This actor's run (frame indexes count every captured frame, so drops show between them).
    run_processed: int = 0
    run_captured: int = 0
    captured_before: int = 0
    dropped_before: int = 0
    recent_wall: deque = field(default_factory=lambda: deque(maxlen=60))

    def end_run(self, counts: tuple[int, int] | None) -> None:
        """This actor's run of the camera is over: fold its counts into the totals."""
        captured, dropped = counts if counts is not None else (
            self.run_captured, max(0, self.run_captured - self.run_processed))
        self.captured_before += captured
        self.dropped_before += dropped
        self.run_captured = self.run_processed = 0

    def write(self, record: dict[str, Any]) -> None:
        wall = float(record.pop("_wall"))
        if self.resumed:
            self.resumed = False
            gap_s = max(0.0, wall - self.last_wall) if self.last_wall is not None else 0.0
            self.frame_base = self.next_frame - int(record["frame"])
            self.t_base = self.last_t + gap_s - float(record["t"])
            record["gap_s"] = round(gap_s, 3)
            record["resumed"] = True
        self.run_processed += 1
        self.run_captured = max(self.run_captured, int(record["frame"]) + 1)
        record["frame"] = int(record["frame"]) + self.frame_base
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

    def health(self) -> str:
        s = self.summary
        span = self.recent_wall[-1] - self.recent_wall[0] if len(self.recent_wall) > 1 else 0.0
        fps = (len(self.recent_wall) - 1) / span if span > 0 else 0.0
        if self.recent_wall and time.time() - self.recent_wall[-1] > 5.0:
            fps = 0.0  # no frame for a while: not the fps of a minute ago
        dropped = self.dropped_before + max(0, self.run_captured - self.run_processed)
        state = "ended" if self.ended else (f"on {self.where}" if self.where else "waiting for a worker")
        line = (f"[{self.gid}] {s.source} {state}: {s.frames_processed} frames, {dropped} dropped, {fps:.1f} fps, "
                f"latency p50 {s.latency_percentile(50):.0f} ms p95 {s.latency_percentile(95):.0f} ms")
        if self.restarts:
            line += f", {self.restarts} restart(s)"
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
        if spec.output is not None:
            raise ConfigError(f"source '{spec.name}': 'output' is set, but camera fleets on Ray write no annotated "
                              f"video (event logs only); remove it or run without --ray")
    # Actors run in another folder, maybe on another node: every path they get is absolute.
    worker_config = config.with_overrides({
        "classifier.model": config.classifier.model.expanduser().absolute(),
        "detector.model": config.detector.model.expanduser().absolute(),
        "output.video": False, "output.events": False, "output.progress": False, "output.display": "off"})
    cameras = []
    for i, spec in enumerate(specs):
        events = spec.events or (config.output.dir / f"{spec.name}.events.jsonl" if config.output.events else None)
        cameras.append(_Camera(i, replace(spec, output=None, events=None, max_frames=None),
                               RunSummary(source=redact_url(spec.name), source_id=i),
                               events_path=Path(events).expanduser().absolute() if events is not None else None,
                               max_frames=spec.max_frames or options.max_frames))
    return cameras, worker_config


def run_fleet(specs: Sequence[SourceSpec], config: Config, options: FleetOptions,
              on_health: Callable[[list[str]], None] | None = None) -> FleetResult:
    """Run the cameras on Ray actors until they end, ``max_seconds`` pass or the interrupt is set.

    Args:
        specs: The cameras (live sources; ``paced`` files play as cameras).
        config: Configuration; ``output.dir`` holds the default event logs, written here on the driver.
        options: Fleet choices.
        on_health: Called with one line per camera every ``options.health_every_s``.

    Returns:
        One summary per camera (its ``error`` set if it failed) and the restarts of each.

    Raises:
        ConfigError: Ray is missing or unreachable, or a source asks for what a fleet cannot do.
        OutputError: An event log cannot be written.
        ModelError: The actors could not load the models.
    """
    from stream.batch.ray_workers import NAMESPACE, connect
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

        _Driver(ray, NAMESPACE, groups, worker_config, options, interrupt, on_health, result).run()
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
            cam.summary.frames_captured = cam.captured_before + cam.run_captured
            cam.summary.frames_dropped = cam.dropped_before + max(0, cam.run_captured - cam.run_processed)
        result.restarts = [c.restarts for c in cameras]
        if started:
            import ray

            ray.shutdown()
    return result


class _Driver:
    """The driver's loop: start actors, pull records, replace dead actors, stop everything at the end."""

    def __init__(self, ray: Any, namespace: str, groups: list[_Group], config: Config, options: FleetOptions,
                 interrupt: threading.Event, on_health: Callable[[list[str]], None] | None,
                 result: FleetResult) -> None:
        self.ray = ray
        self.namespace = namespace
        self.groups = groups
        self.config = config
        self.options = options
        self.interrupt = interrupt
        self.on_health = on_health
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
                tick = time.perf_counter()
                for group in self.groups:
                    if not group.done and group.poll_ref is None:
                        group.poll_ref = group.actor.poll.remote()
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

    def _launch(self, group: _Group) -> None:
        self.made += 1
        name = f"{ACTOR_PREFIX}{self.run_id}-g{self.groups.index(group)}-{self.made}"
        group.actor = self.remote.options(
            name=name, namespace=self.namespace, num_cpus=self.options.cpus_per_worker,
            num_gpus=self.options.gpus_per_worker, max_restarts=0, scheduling_strategy="SPREAD",
        ).remote(self.config)
        # A resumed camera with max_frames gets what is left of it.
        specs = [replace(c.spec, max_frames=max(1, c.max_frames - c.summary.frames_processed) if c.max_frames else None)
                 for c in group.cameras if not c.ended]
        ids = [c.gid for c in group.cameras if not c.ended]
        group.start_ref = group.actor.start.remote(ids, specs)
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
        by_id = {c.gid: c for c in group.cameras}
        for record in answer["records"]:
            by_id[record["source_id"]].write(record)
        if answer["lost"]:
            self.result.records_lost += answer["lost"]
            log.warning("a fleet worker dropped %d event records: the driver fell behind", answer["lost"])
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
        if answer["done"]:
            counts = answer.get("counts", {})
            for cam in group.cameras:
                if not cam.ended or cam.gid in counts:
                    cam.end_run(counts.get(cam.gid))
                if not cam.ended and answer.get("failure"):
                    cam.summary.error = StreamError(answer["failure"])
                    cam.last_error = answer["failure"]
                cam.ended = True
            if answer.get("failure"):
                log.warning("cameras %s failed: %s", ", ".join(c.summary.source for c in group.cameras),
                            answer["failure"])
            group.done = True
            self._kill(group)

    def _replace(self, group: _Group, err: BaseException) -> None:
        group.deaths += 1
        self._kill(group)
        alive = [c for c in group.cameras if not c.ended]
        names = ", ".join(c.summary.source for c in alive)
        for cam in alive:
            cam.end_run(None)
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
            group.done = True
        else:
            log.warning("the worker of cameras %s died (%s); starting a new one", names, type(err).__name__)
            self._launch(group)

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
                stopping[group.actor.stop.remote()] = group
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
