"""``emostream batch INPUTS... --out DIR``: many files through one pipeline (``--ray``: on Ray actors)."""

from __future__ import annotations

import argparse
from pathlib import Path

from stream.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Interrupt,
    model_flags,
    model_overrides,
    positive_float,
    positive_int,
    say,
)
from stream.config import load_config

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``batch`` to the ``emostream`` subcommands."""
    p = sub.add_parser(
        "batch", help="many videos and images -> event logs + one dataset (Parquet), resumable",
        description="Process files, folders (recursive), globs or a .txt list of paths. Per input: the event "
                    "log (and the annotated file with --video) under DIR, mirroring the input tree. For the job: "
                    "DIR/faces.parquet (one row per face per frame), videos.parquet, tracks.parquet, job.json. "
                    "Re-running the same command skips finished inputs. Exit 0: all done; 2: some inputs "
                    "failed (job.json names them); 130: interrupted, finished inputs kept.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video or image file, folder, glob, or .txt list")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder of the job")
    p.add_argument("--video", action="store_true", help="also write each input's annotated video or image")
    p.add_argument("--csv", action="store_true", help="also write the tables as CSV")
    p.add_argument("--parallel", type=positive_int, default=4, metavar="N",
                   help="inputs processed at once through one pipeline, per worker (default 4)")
    p.add_argument("--max-frames", type=positive_int, metavar="N", help="stop each input after N frames")
    model_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = p.add_argument_group("Ray (pip install 'emostream[ray]')")
    ray.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="run on Ray actors: the cluster at ADDRESS, else RAY_ADDRESS, else a new local Ray")
    ray.add_argument("--workers", type=positive_int, metavar="N",
                     help="Ray workers (default: the cluster's CPUs / --cpus-per-worker)")
    ray.add_argument("--cpus-per-worker", type=positive_float, default=1.0, metavar="C", help="default 1")
    ray.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                     help="GPU fraction per worker, e.g. 0.25 (with --providers cuda); default 0")
    p.set_defaults(func=_cmd_batch)


def _cmd_batch(args: argparse.Namespace) -> int:
    from stream.batch.inputs import find_inputs
    from stream.batch.job import BatchOptions, check_options, run_batch

    config = load_config(args.config).with_overrides(model_overrides(args))
    interrupt = Interrupt()  # first Ctrl-C/SIGTERM: finish the inputs' current frames, keep what is done
    options = BatchOptions(video=args.video, csv=args.csv, parallel=args.parallel, progress=not args.no_progress,
                           max_frames=args.max_frames, ray=args.ray, workers=args.workers,
                           cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                           interrupt=interrupt.event)
    check_options(options)
    inputs, warnings = find_inputs(args.inputs, exclude=args.out)
    for warning in warnings:
        say(f"emostream: warning: {warning}")
    interrupt.install()
    from stream.batch.ray_workers import run_on_ray  # ray itself is imported only when it runs

    report = run_batch(inputs, args.out, config, options, ray_runner=run_on_ray if options.ray is not None else None)
    for line in report.lines():
        say(line)
    if report.was_interrupted:
        say("interrupted: finished inputs kept; run the same command again to finish the job")
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT if report.failed else EXIT_OK
