"""Batch inputs on Ray actors: each loads the models once and processes many groups of inputs.

Imported only when ``--ray`` is given; ``ray`` itself is imported inside the functions.
Every worker runs :func:`stream.batch.job.process_group`, the same code as the
in-process job, and writes its outputs and dataset parts into the job's output
folder, so on a cluster that folder (and the inputs) must be on storage every
node sees. The driver alone writes the done-markers.

A worker that dies (killed, out of memory, its node lost) is replaced by a new
actor; its group's inputs go back to the queue one by one. An input whose worker
died :data:`MAX_ATTEMPTS` times is recorded as failed (it may crash the decoder).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stream.batch.inputs import InputFile
from stream.batch.job import FAILED, BatchOptions, JobReport, Outcome, process_group
from stream.config import Config
from stream.contract import printable
from stream.errors import ConfigError, StreamError

__all__ = ["ACTOR_PREFIX", "MAX_ATTEMPTS", "NAMESPACE", "BatchWorker", "connect", "run_on_ray"]

log = logging.getLogger(__name__)

#: Ray namespace and name prefix of the worker actors (``ray.util.list_named_actors`` finds them).
NAMESPACE = "emostream"
ACTOR_PREFIX = "emostream-batch-"
MAX_ATTEMPTS = 3
_WAIT_S = 0.2


class BatchWorker:
    """The Ray actor: models loaded once, then any number of :meth:`process` calls."""

    def __init__(self, out_dir: str, config: Config, video: bool, max_frames: int | None) -> None:
        from stream.pipeline import load_models

        self.out_dir = Path(out_dir)
        self.config = config
        self.video = video
        self.max_frames = max_frames
        self.error = ""
        try:
            self.models: Any = load_models(config)
        except StreamError as err:  # reported by process(): the driver ends the job with this message
            self.error = str(err)

    def pid(self) -> int:
        """The worker's process id."""
        return os.getpid()

    def process(self, items: list[InputFile]) -> dict[str, Any]:
        """Process one group; ``{"outcomes": [...]}`` or ``{"error": message}`` when the models failed."""
        if self.error:
            return {"error": self.error}
        outcomes = process_group(items, self.out_dir, self.config, self.models, video=self.video,
                                 max_frames=self.max_frames)
        return {"outcomes": [dataclasses.asdict(o) for o in outcomes]}


def _connect(address: str) -> bool:
    """``ray.init``: the given address, else ``RAY_ADDRESS``, else a new local Ray. True if we started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": False, "configure_logging": False}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or None, **kwargs)
    else:
        ray.init(include_dashboard=False, **kwargs)
    return True


def _probe(address: str, timeout_s: float) -> None:
    """Fail at once when nothing listens at a ``host:port`` (or ``ray://host:port``) address.

    ``ray.init`` retries an unreachable cluster for minutes and ignores signals meanwhile.
    """
    text = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or "/" in text:
        return  # "auto", "local", a bare host: left to Ray (still bounded by the timeout)
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except TimeoutError:
        raise ConfigError(f"--ray: no answer from '{address}' within {timeout_s:g} s (ray.timeout_s)") from None
    except (OSError, ValueError, OverflowError) as err:
        why = err.strerror if isinstance(err, OSError) and err.strerror else str(err) or type(err).__name__
        raise ConfigError(f"--ray: cannot reach Ray at '{address}': {why}") from None


def _no_sigterm_warning(record: logging.LogRecord) -> bool:
    return "SIGTERM handler is not set" not in record.getMessage()


def connect(address: str | None, *, timeout_s: float = 30.0, interrupt: threading.Event | None = None) -> bool:
    """Connect to Ray for ``--ray [ADDRESS]`` (see :func:`_connect`). True if this call started a local Ray.

    Bounded, for a cluster's address: where nothing listens it fails at once, and a connection
    not made within ``timeout_s`` (``ray.timeout_s``) fails with one line; ``interrupt`` (Ctrl-C,
    SIGTERM) ends the wait with ``KeyboardInterrupt``. ``ray.init`` runs in a daemon thread for
    this: a hung one is left behind, it does not keep the process alive. A new local Ray (no
    address) is started on the calling thread.

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot be reached in time.
        KeyboardInterrupt: ``interrupt`` was set while waiting.
    """
    try:
        import ray  # noqa: F401
    except ImportError as err:
        raise ConfigError("--ray needs Ray, which is not installed: pip install 'emostream[ray]'") from err
    target = address or os.environ.get("RAY_ADDRESS") or ""
    shown = printable(target)[:200]
    if target and target != "local":
        _probe(target, timeout_s)
    else:
        # A new local Ray: started on this thread. Its processes die with the thread that started
        # them (PR_SET_PDEATHSIG), so not on a helper thread; nothing remote to wait for either.
        # Ray replaces the SIGTERM handler with sys.exit: ours (Ctrl-C semantics) is put back.
        handler = signal.getsignal(signal.SIGTERM)
        try:
            return _connect(address or "")
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as err:
            raise ConfigError(f"--ray: a local Ray could not start: "
                              f"{printable(str(err).splitlines()[0])[:200] if str(err) else type(err).__name__}"
                              ) from err
        finally:
            if threading.current_thread() is threading.main_thread() and handler is not None:
                signal.signal(signal.SIGTERM, handler)
    result: dict[str, Any] = {}

    def init() -> None:
        try:
            result["started"] = _connect(address or "")
        except BaseException as err:  # handed to the waiting thread
            result["error"] = err

    # Off the main thread Ray sets no SIGTERM handler of its own (on it, it replaces ours with sys.exit),
    # and says so in a warning: not news to the user.
    logging.getLogger("ray._private.worker").addFilter(_no_sigterm_warning)
    thread = threading.Thread(target=init, name="ray-connect", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while thread.is_alive():
        if interrupt is not None and interrupt.is_set():
            raise KeyboardInterrupt
        if time.monotonic() >= deadline:
            raise ConfigError(f"--ray: could not connect to Ray at '{shown}' within {timeout_s:g} s (ray.timeout_s)")
        thread.join(0.1)
    failure = result.get("error")
    if isinstance(failure, (ConnectionError, RuntimeError, ValueError, TimeoutError)):
        why = printable(str(failure).splitlines()[0])[:200] if str(failure) else type(failure).__name__
        raise ConfigError(f"--ray: could not connect to Ray at '{shown}': {why}") from failure
    if failure is not None:
        raise failure
    return bool(result.get("started"))


def run_on_ray(groups: list[list[InputFile]], out_dir: Path, config: Config, options: BatchOptions,
               interrupt: threading.Event, report: JobReport) -> Iterator[Outcome]:
    """Yield the outcome of every input as the workers finish them (see the module docstring).

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot hold one worker.
        ModelError: The workers could not load the models.
    """
    started = connect(options.ray, timeout_s=config.ray.timeout_s, interrupt=interrupt)
    import ray
    from ray.exceptions import RayActorError

    cpus = float(ray.cluster_resources().get("CPU", 1))
    workers = options.workers or max(1, int(cpus // options.cpus_per_worker))
    workers = max(1, min(workers, len(groups)))
    report.mode = f"ray {options.ray or os.environ.get('RAY_ADDRESS') or 'local'}, {workers} workers"
    remote = ray.remote(BatchWorker)
    job_id = uuid.uuid4().hex[:8]
    made = 0

    def new_actor() -> Any:
        nonlocal made
        made += 1
        # max_concurrency 2: pid() answers while process() runs (the driver never sends two process calls).
        return remote.options(name=f"{ACTOR_PREFIX}{job_id}-{made}", num_cpus=options.cpus_per_worker,
                              num_gpus=options.gpus_per_worker, max_concurrency=2, max_restarts=0).remote(
            str(out_dir), config, options.video, options.max_frames)

    actors = [new_actor() for _ in range(workers)]
    pending: deque[tuple[list[InputFile], int]] = deque((g, 0) for g in groups)
    running: dict[Any, tuple[int, list[InputFile], int]] = {}
    idle = list(range(workers))
    try:
        while (pending or running) and not interrupt.is_set():
            while idle and pending:
                slot = idle.pop()
                group, attempts = pending.popleft()
                running[actors[slot].process.remote(group)] = (slot, group, attempts)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=_WAIT_S)
            for ref in ready:
                slot, group, attempts = running.pop(ref)
                try:
                    answer = ray.get(ref)
                except RayActorError as err:
                    log.warning("a batch worker died (%s); replacing it, %d input(s) go back to the queue",
                                type(err).__name__, len(group))
                    ray.kill(actors[slot], no_restart=True)
                    actors[slot] = new_actor()
                    report.workers_replaced += 1
                    if attempts + 1 >= MAX_ATTEMPTS:
                        for item in group:
                            yield Outcome(item.key, item.rel, FAILED,
                                          reason=f"the worker processing it died {attempts + 1} times")
                    else:
                        # One by one from now on: an input that kills its worker takes no other input down.
                        pending.extendleft(([item], attempts + 1) for item in reversed(group))
                    idle.append(slot)
                    continue
                if "error" in answer:
                    from stream.errors import ModelError

                    raise ModelError(answer["error"])
                idle.append(slot)
                for outcome in answer["outcomes"]:
                    yield Outcome(**outcome)
    finally:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception as err:  # best effort: the cluster cleans up after the driver anyway
                log.debug("could not kill a worker: %s", err)
        if started:
            ray.shutdown()
