"""A batch job: its folder state, the work on its inputs (one pipeline kept full), and the loop that drives it.

The job folder ``DIR/.job/`` holds a lock (one job writes a folder at a time),
one done-marker per finished input (``done/<key>.json``: the input's path, size
and modification time when it was read, its videos-table row) and its dataset
part files (``parts/<key>.faces.parquet``, ``.tracks.parquet``). A marker is
written last, after the input's outputs and parts are whole, so it is the
commit point: a killed job loses at most the inputs in flight, and a re-run
skips every input whose marker still matches the file. The dataset is rebuilt
from the parts of the finished inputs at the end of every run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream.batch.inputs import InputFile
from stream.capture.sources import is_image_file
from stream.capture.spec import SourceSpec
from stream.config import Config
from stream.errors import ConfigError, OutputError, StreamError
from stream.render.outputs import partial_path, write_output
from stream.summary import RunSummary

__all__ = ["BatchOptions", "JobFolder", "JobReport", "Outcome", "process_group", "process_inputs", "run_batch"]

log = logging.getLogger(__name__)

DONE, FAILED, INTERRUPTED = "done", "failed", "interrupted"
#: Inputs run through one pipeline in process (at least 4 x ``parallel``), then a new one starts.
INPUTS_PER_PIPELINE = 32


@dataclass(frozen=True)
class BatchOptions:
    """Choices of one batch job.

    Attributes:
        video: Also write the annotated video (or image) of every input.
        csv: Also write the tables as CSV.
        parallel: Inputs processed together through one pipeline (per worker).
        progress: Show the progress bar.
        max_frames: Stop each input after this many frames.
        ray: None: in-process; ``""``: Ray (``RAY_ADDRESS`` or a local Ray); else the cluster's address.
        workers: Ray actors (None: as many as the cluster's CPUs allow).
        cpus_per_worker: CPUs each Ray actor asks for.
        gpus_per_worker: GPU fraction each Ray actor asks for (0: none).
        interrupt: Set (by a signal handler) to end the job early, finished inputs kept.
    """

    video: bool = False
    csv: bool = False
    parallel: int = 4
    progress: bool = True
    max_frames: int | None = None
    ray: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    interrupt: threading.Event | None = None


@dataclass
class Outcome:
    """What happened to one input (plain data: it crosses process boundaries under Ray)."""

    key: str
    rel: str
    status: str
    reason: str = ""
    warning: str = ""
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0
    video_row: dict[str, Any] | None = None
    outputs: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    share_labels: list[str] = field(default_factory=list)
    heads: list[list[Any]] = field(default_factory=list)


def fingerprint(path: str) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of an input, or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class JobFolder:
    """``DIR/.job``: lock, done-markers and dataset parts (see the module docstring).

    Raises:
        OutputError: The folder cannot be created, or another job is writing it.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / ".job"
        try:
            (self.dir / "done").mkdir(parents=True, exist_ok=True)
            (self.dir / "parts").mkdir(parents=True, exist_ok=True)
            self._lock = open(self.dir / "lock", "a+")  # noqa: SIM115
        except OSError as err:
            raise OutputError(f"job folder '{self.dir}' could not be written: {err.strerror or err}") from err
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            self._lock.close()
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise OutputError(f"output folder '{self.out_dir}' is being written by another batch job") from None
            raise OutputError(f"job folder '{self.dir}' could not be locked: {err.strerror or err}") from err

    def close(self) -> None:
        if not self._lock.closed:
            self._lock.close()  # releases the lock

    def __enter__(self) -> JobFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def part(self, item: InputFile) -> Path:
        return self.dir / "parts" / item.key

    def _marker(self, item: InputFile) -> Path:
        return self.dir / "done" / f"{item.key}.json"

    def finished(self, item: InputFile, video: bool) -> dict[str, Any] | None:
        """The input's marker when it is finished and unchanged since (with a video, if one is wanted)."""
        from stream.batch.dataset import part_files

        try:
            marker = json.loads(self._marker(item).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if marker.get("input") != item.path or marker.get("fingerprint") != list(fingerprint(item.path) or []):
            return None
        if video and not marker.get("video"):
            return None
        # Its outputs must still be there, as written: a deleted or replaced event log or video is redone.
        prints = marker.get("output_prints") or {}
        for path in marker.get("outputs") or []:
            now = fingerprint(path)
            if now is None or (path in prints and list(now) != prints[path]):
                return None
        if not all(p.is_file() for p in part_files(self.part(item))):
            return None
        return marker

    def mark_done(self, item: InputFile, print_: tuple[int, int] | None, outcome: Outcome, video: bool) -> None:
        """Commit one finished input (atomic: written under a temporary name, then renamed)."""
        marker = {"input": item.path, "rel": item.rel, "fingerprint": list(print_ or []), "video": video,
                  "frames": outcome.frames, "faces": outcome.faces, "warning": outcome.warning,
                  "video_row": outcome.video_row, "outputs": outcome.outputs, "labels": outcome.labels,
                  "share_labels": outcome.share_labels, "heads": outcome.heads,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "output_prints": {p: list(f) for p in outcome.outputs if (f := fingerprint(p)) is not None}}
        write_output(self._marker(item), json.dumps(marker), "done-marker")

    def forget(self, item: InputFile) -> None:
        """Drop an input's marker (it is about to be redone)."""
        with contextlib.suppress(FileNotFoundError):
            self._marker(item).unlink()


def _partial_leftovers(paths: Sequence[Path]) -> None:
    """Remove the partial files an earlier, killed run of these inputs left (they are redone from the start)."""
    for path in paths:
        with contextlib.suppress(OSError):
            partial_path(path).unlink()


def process_group(items: Sequence[InputFile], out_dir: Path, config: Config, models: Any, *,
                  video: bool, max_frames: int | None = None,
                  interrupt: threading.Event | None = None) -> list[Outcome]:
    """Run a few inputs together through one pipeline; write their outputs and parts.

    :func:`process_inputs` with every input at once; the outcomes in the inputs' order.
    """
    order = {item.key: i for i, item in enumerate(items)}
    outcomes = process_inputs(items, out_dir, config, models, parallel=max(1, len(items)), video=video,
                              max_frames=max_frames, interrupt=interrupt)
    return sorted(outcomes, key=lambda o: order[o.key])


def process_inputs(items: Sequence[InputFile], out_dir: Path, config: Config, models: Any, *, parallel: int,
                   video: bool, max_frames: int | None = None,
                   interrupt: threading.Event | None = None) -> Iterator[Outcome]:
    """Run inputs through one pipeline (one batched inference stage), ``parallel`` at a time.

    As soon as an input ends the next one joins the running pipeline (:meth:`Pipeline.add_source`),
    so the inference stage stays full instead of waiting for the longest input of a group. Each
    outcome comes when its input is done: its outputs are published and its dataset part written
    (the caller then commits it). An input that cannot be opened fails alone, at once.

    Args:
        items: The inputs, in the order they are started.
        out_dir: The job's output folder.
        config: Configuration (``output.video`` matching ``video``).
        models: Loaded :class:`stream.pipeline.Models`.
        parallel: Inputs in the pipeline at once.
        video: Write the annotated video (or image).
        max_frames: Stop each input after this many frames.
        interrupt: Ends the pipeline early: the inputs in it come back ``interrupted`` (their outputs
            stay partial: they are redone), those not started get no outcome.

    Yields:
        One outcome per input started (and per input not started when the inference stage failed).
    """
    from stream.pipeline import Pipeline, RunOptions

    parts = _PartWriter(out_dir, config, models)
    specs = {}
    for n, item in enumerate(items):
        image = is_image_file(Path(item.path))
        annotated, events = item.outputs(out_dir, image)
        _partial_leftovers([annotated, events])
        specs[item.key] = (SourceSpec(item.path, name=f"input{n}", output=annotated if video else None,
                                      events=events, max_frames=max_frames), image)
    finish = threading.Event()  # every input done, or the interrupt: the pipeline (kept open till then) ends
    feeder = _Feeder(items, specs, parallel, interrupt, finish)
    # An input the interrupt cuts short is not published: its outputs stay partial, it is redone.
    options = RunOptions(display=False, interrupt=finish, publish_interrupted=False, keep_open=True)
    pipeline = Pipeline([], config, options, models, sinks=[feeder])
    failure = ""
    try:
        with pipeline:
            feeder.begin(pipeline)
            try:
                for _ in pipeline:
                    for done in feeder.take():
                        yield parts.outcome(*done)
            except BaseException:
                finish.set()  # before the pipeline closes: the feeder adds nothing more
                raise
    except StreamError as err:  # the inference stage failed: every input not done fails with it
        failure = str(err)
    finally:
        feeder.close()
    for done in feeder.take():
        yield parts.outcome(*done)
    for entry in feeder.running.values():  # cut short by the interrupt (or the failure)
        summary = pipeline.summaries[entry.source_id]
        if failure and not summary.interrupted and summary.error is None:
            summary.error = StreamError(failure)
        yield parts.outcome(entry, summary, "")
    if failure:
        for item in feeder.todo:
            yield Outcome(item.key, item.rel, FAILED, reason=failure)
    elif feeder.error is not None:
        raise feeder.error


@dataclass
class _Input:
    """An input on its way through the pipeline."""

    item: InputFile
    spec: SourceSpec
    image: bool
    t_start_s: float = 0.0
    source_id: int = -1


class _Feeder(threading.Thread):
    """Keeps ``parallel`` inputs in the pipeline: adds the next as soon as one ends (a sink of it).

    The adding is done on this thread (:meth:`Pipeline.add_source` waits for the consuming thread,
    which serves it between two results); the sink calls, on the consuming thread, only move
    entries and wake it. When every input is done, or the interrupt is set, it sets ``finish``.
    """

    wants_images = False

    def __init__(self, items: Sequence[InputFile], specs: dict[str, tuple[SourceSpec, bool]], parallel: int,
                 interrupt: threading.Event | None, finish: threading.Event) -> None:
        super().__init__(name="batch-feeder", daemon=True)
        self.todo = deque(items)
        self.specs = specs
        self.parallel = parallel
        self.interrupt = interrupt
        self.finish = finish
        self.pipeline: Any = None
        self.error: BaseException | None = None
        self.running: dict[int, _Input] = {}
        self._pending: dict[str, _Input] = {}  # by source name, until the pipeline has it
        self._done: deque[tuple[_Input, RunSummary | None, str]] = deque()
        self._guard = threading.Lock()
        self._woken = threading.Event()
        self._closing = threading.Event()

    def begin(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.start()

    def close(self) -> None:
        self._closing.set()
        self._woken.set()
        if self.is_alive():
            self.join(timeout=60)

    def take(self) -> list[tuple[_Input, RunSummary | None, str]]:
        """The inputs done since the last call: (input, its final summary, or None and why it did not open)."""
        out = []
        while self._done:
            out.append(self._done.popleft())
        return out

    def run(self) -> None:
        try:
            while not self._closing.is_set():
                self._woken.clear()
                if self.interrupt is not None and self.interrupt.is_set():
                    self.finish.set()
                    return
                with self._guard:
                    busy = len(self.running) + len(self._pending)
                if busy == 0 and not self.todo:
                    self.finish.set()  # every input is done: the pipeline ends
                    return
                if busy < self.parallel and self.todo and not self.finish.is_set():
                    self._add(self.todo.popleft())
                    continue
                self._woken.wait(0.2)
        except BaseException as err:  # a bug: the pipeline ends, the caller raises it
            self.error = err
            self.finish.set()

    def _add(self, item: InputFile) -> None:
        spec, image = self.specs[item.key]
        entry = _Input(item, spec, image, time.perf_counter())
        with self._guard:
            self._pending[spec.name] = entry
        try:
            self.pipeline.add_source(spec)
        except StreamError as err:
            with self._guard:
                self._pending.pop(spec.name, None)
            if self.finish.is_set() or self._closing.is_set():
                self.todo.appendleft(item)  # the pipeline is ending: not started
            else:
                self._done.append((entry, None, str(err)))  # cannot be opened: fails alone

    # -- Sink (the pipeline's consuming thread) ------------------------------------------------

    def on_start(self, summaries: list[RunSummary]) -> None:
        pass

    def on_source_added(self, summary: RunSummary) -> None:
        with self._guard:
            entry = self._pending.pop(summary.name, None)
            if entry is not None:
                entry.source_id = summary.source_id
                self.running[summary.source_id] = entry

    def on_result(self, result: Any, summary: RunSummary) -> None:
        pass

    def on_source_end(self, summary: RunSummary) -> None:
        with self._guard:
            entry = self.running.pop(summary.source_id, None)
        if entry is not None:
            self._done.append((entry, summary, ""))  # its outputs are published by now
            self._woken.set()


class _PartWriter:
    """An input's outcome from its summary: its dataset part written from its event log."""

    def __init__(self, out_dir: Path, config: Config, models: Any) -> None:
        self.out_dir = Path(out_dir)
        self.labels = list(models.classifier.labels)
        self.share_labels = self.labels + (["uncertain"] if config.classifier.uncertain_below > 0 else [])
        self.heads = [[name, list(parts)] for name, parts in models.classifier.contract.heads]  # more columns

    def outcome(self, entry: _Input, summary: RunSummary | None, reason: str) -> Outcome:
        from stream.batch.dataset import input_tables, write_part

        item, spec = entry.item, entry.spec
        if summary is None:
            return Outcome(item.key, item.rel, FAILED, reason=reason)
        common: dict[str, Any] = {"key": item.key, "rel": item.rel, "frames": summary.frames_processed,
                                  "faces": summary.faces, "seconds": round(time.perf_counter() - entry.t_start_s, 3)}
        if summary.interrupted:
            return Outcome(status=INTERRUPTED, **common)
        if summary.error is not None:
            return Outcome(status=FAILED, reason=str(summary.error), **common)
        assert spec.events is not None
        if not spec.events.is_file():
            return Outcome(status=FAILED, reason=f"source '{item.path}': no frame was processed", **common)
        try:
            tables = input_tables(spec.events, item.rel, self.labels, self.share_labels, image=entry.image,
                                  heads=self.heads)
            write_part(tables, self.labels, self.share_labels, self.out_dir / ".job" / "parts" / item.key,
                       heads=self.heads)
        except OutputError as err:
            return Outcome(status=FAILED, reason=str(err), **common)
        return Outcome(status=DONE, warning=summary.warning, video_row=tables.video,
                       outputs=[str(p) for p in summary.outputs], labels=self.labels,
                       share_labels=self.share_labels, heads=self.heads, **common)


@dataclass
class JobReport:
    """What a run of a job did; written as ``DIR/job.json``."""

    out_dir: str
    mode: str
    inputs: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    not_started: int = 0
    frames: int = 0
    faces: int = 0
    wall_s: float = 0.0
    workers_replaced: int = 0
    dataset: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def was_interrupted(self) -> bool:
        return bool(self.interrupted) or self.not_started > 0

    def lines(self) -> list[str]:
        """The short human summary."""
        fps = self.frames / self.wall_s if self.wall_s > 0 else 0.0
        files = self.done / self.wall_s if self.wall_s > 0 else 0.0
        out = [f"batch ({self.mode}): {self.inputs} inputs: {self.done} done now, {self.skipped} already done, "
               f"{len(self.failed)} failed" + (f", {len(self.interrupted) + self.not_started} left for a re-run"
                                               if self.was_interrupted else ""),
               f"frames: {self.frames} ({fps:.1f} frames/s, {files:.2f} files/s over {self.wall_s:.1f} s); "
               f"faces: {self.faces}"]
        if self.workers_replaced:
            out.append(f"workers replaced: {self.workers_replaced}")
        out.extend(f"failed: {f['input']}: {f['reason']}" for f in self.failed)
        out.extend(f"warning: {w['input']}: {w['warning']}" for w in self.warnings)
        out.extend(self.notes)
        for kind in ("faces", "videos", "tracks"):
            if kind in self.dataset:
                out.append(f"wrote: {self.dataset[kind]} ({self.dataset[f'{kind}_rows']} rows)")
        out.append(f"wrote: {Path(self.out_dir) / 'job.json'}")
        return out


Executor = Callable[[list[list[InputFile]]], Iterator[Outcome]]
#: Runs groups of inputs on Ray actors and yields their outcomes (:func:`stream.batch.ray_workers.run_on_ray`).
RayRunner = Callable[[list[list[InputFile]], Path, Config, BatchOptions, threading.Event, JobReport],
                     Iterator[Outcome]]


def run_batch(inputs: Sequence[InputFile], out_dir: Path, config: Config, options: BatchOptions,
              models: Any = None, ray_runner: RayRunner | None = None) -> JobReport:
    """Run (or resume) a batch job: every input not finished yet, then the dataset and the report.

    Args:
        inputs: From :func:`stream.batch.inputs.find_inputs`.
        out_dir: The output folder (it mirrors the input tree; it holds the dataset and ``job.json``).
        config: Configuration.
        options: Batch choices.
        models: Loaded models for the in-process run (loaded when needed if None).
        ray_runner: With ``options.ray``: what runs the groups on Ray actors
            (:func:`stream.batch.ray_workers.run_on_ray`; this module sits below it).

    Returns:
        The report (also written to ``DIR/job.json``).

    Raises:
        StreamError: Bad config or models, or the output folder cannot be written.
    """
    from stream.batch.dataset import combine, require_pyarrow

    require_pyarrow()
    if options.parallel > config.capture.max_sources:
        raise ConfigError(f"--parallel {options.parallel}: more than capture.max_sources "
                          f"({config.capture.max_sources}) inputs in one pipeline")
    out_dir = Path(out_dir).absolute()  # Ray workers run in another folder: never hand them a relative path
    config = config.with_overrides({"output.video": options.video, "output.events": True,
                                    "output.progress": False, "output.dir": out_dir})
    interrupt = options.interrupt or threading.Event()
    report = JobReport(str(out_dir), "in-process" if options.ray is None else f"ray {options.ray or 'local'}".strip(),
                       inputs=len(inputs))
    t0 = time.perf_counter()
    with JobFolder(out_dir) as job:
        by_key = {item.key: item for item in inputs}
        todo = [item for item in inputs if job.finished(item, options.video) is None]
        report.skipped = len(inputs) - len(todo)
        prints = {item.key: fingerprint(item.path) for item in todo}
        for item in todo:
            job.forget(item)
        # Big files first: the longest inputs do not start last (in process the next input joins as soon
        # as one ends; on Ray a group ends when its longest input does).
        todo.sort(key=lambda i: -(prints[i.key] or (0, 0))[0])
        groups = [todo[i:i + options.parallel] for i in range(0, len(todo), options.parallel)]
        executor = _executor(out_dir, config, options, models, interrupt, report, ray_runner)
        seen: set[str] = set()
        bar = _progress(len(todo), options.progress)
        try:
            for outcome in executor(groups) if groups else iter(()):
                seen.add(outcome.key)
                item = by_key[outcome.key]
                report.frames += outcome.frames
                report.faces += outcome.faces
                if outcome.status == DONE:
                    job.mark_done(item, prints[item.key], outcome, options.video)
                    report.done += 1
                    if outcome.warning:
                        report.warnings.append({"input": item.path, "warning": outcome.warning})
                elif outcome.status == FAILED:
                    report.failed.append({"input": item.path, "reason": outcome.reason})
                else:
                    report.interrupted.append(item.path)
                bar.update(1)
                elapsed = time.perf_counter() - t0
                bar.set_postfix_str(f"{report.frames} frames, {report.frames / elapsed:.0f} frames/s, "
                                    f"{len(report.failed)} failed", refresh=False)
                if interrupt.is_set():
                    break
        except KeyboardInterrupt:
            interrupt.set()
        finally:
            bar.close()
        report.not_started = sum(1 for item in todo if item.key not in seen)
        if not interrupt.is_set():
            report.not_started = 0
        finished = [(item, m) for item in inputs if (m := job.finished(item, options.video)) is not None]
        report.wall_s = round(time.perf_counter() - t0, 3)
        if finished:
            labels, share_labels = finished[0][1]["labels"], finished[0][1]["share_labels"]
            written = combine([job.part(item) for item, _ in finished], [m["video_row"] for _, m in finished],
                              labels, share_labels, out_dir, csv=options.csv, heads=finished[0][1].get("heads", []))
            report.dataset = {k: str(v) if isinstance(v, Path) else v for k, v in written.items()}
        else:
            report.notes.append("no input finished: no dataset written")
        report.failed.sort(key=lambda f: f["input"])
        write_output(out_dir / "job.json", json.dumps(dataclasses.asdict(report), indent=2) + "\n", "job report")
    return report


def _progress(total: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit="file", dynamic_ncols=True, disable=not enabled or total == 0,
                desc="batch")


def _executor(out_dir: Path, config: Config, options: BatchOptions, models: Any, interrupt: threading.Event,
              report: JobReport, ray_runner: RayRunner | None) -> Executor:
    if options.ray is not None:
        if ray_runner is None:
            raise ConfigError("a batch on Ray needs its runner: pass stream.batch.ray_workers.run_on_ray")
        return lambda groups: ray_runner(groups, out_dir, config, options, interrupt, report)

    def in_process(groups: list[list[InputFile]]) -> Iterator[Outcome]:
        from stream.pipeline import load_models

        loaded = models or load_models(config)  # once for the whole job
        todo = [item for group in groups for item in group]
        # The next input joins as soon as one ends (no group waits for its longest input). A new pipeline
        # every so many inputs: one keeps a little of each source it ran (its summary; with --video its
        # last frame), so a job of any length stays within bounded memory.
        per_pipeline = max(INPUTS_PER_PIPELINE, 4 * options.parallel)
        for start in range(0, len(todo), per_pipeline):
            if interrupt.is_set():
                return
            yield from process_inputs(todo[start:start + per_pipeline], out_dir, config, loaded,
                                      parallel=options.parallel, video=options.video,
                                      max_frames=options.max_frames, interrupt=interrupt)

    return in_process


def check_options(options: BatchOptions) -> None:
    """Refuse option combinations that cannot work.

    Raises:
        ConfigError: A count or fraction out of range.
    """
    if options.parallel < 1:
        raise ConfigError(f"--parallel: expected a positive integer, got {options.parallel}")
    if options.gpus_per_worker < 0 or options.cpus_per_worker <= 0:
        raise ConfigError("--cpus-per-worker must be positive and --gpus-per-worker not negative")
