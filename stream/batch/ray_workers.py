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
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stream.batch.inputs import InputFile
from stream.batch.job import FAILED, BatchOptions, JobReport, Outcome, process_group
from stream.cluster import NAMESPACE, ModelActor, connect
from stream.config import Config

__all__ = ["ACTOR_PREFIX", "MAX_ATTEMPTS", "NAMESPACE", "BatchWorker", "connect", "run_on_ray"]

log = logging.getLogger(__name__)

#: Name prefix of the worker actors (``ray.util.list_named_actors`` finds them, in :data:`NAMESPACE`).
ACTOR_PREFIX = "emostream-batch-"
MAX_ATTEMPTS = 3
_WAIT_S = 0.2


class BatchWorker(ModelActor):
    """The Ray actor: models loaded once, then any number of :meth:`process` calls."""

    def __init__(self, out_dir: str, config: Config, video: bool, max_frames: int | None) -> None:
        super().__init__(config)
        self.out_dir = Path(out_dir)
        self.video = video
        self.max_frames = max_frames

    def process(self, items: list[InputFile]) -> dict[str, Any]:
        """Process one group; ``{"outcomes": [...]}`` or ``{"error": message}`` when the models failed."""
        if self.error:
            return {"error": self.error}
        outcomes = process_group(items, self.out_dir, self.config, self.models, video=self.video,
                                 max_frames=self.max_frames)
        return {"outcomes": [dataclasses.asdict(o) for o in outcomes]}


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
