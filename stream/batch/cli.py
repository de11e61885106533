"""``emostream batch INPUTS... --out DIR``: the subcommand (registered by :mod:`stream.cli`)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from stream.config import load_config

__all__ = ["register"]

_INTERRUPT = threading.Event()


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``batch`` to the ``emostream`` subcommands."""
    from stream.cli import positive_float, positive_int

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
    p.add_argument("--config", type=Path, help="YAML config (see config.yaml)")
    p.add_argument("--model", type=Path, help="emotion classifier ONNX file carrying an emostream contract")
    p.add_argument("--detector", type=Path, help="BlazeFace ONNX file")
    p.add_argument("--providers", help="comma-separated: tensorrt,cuda,cpu (runtime.providers)")
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


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # First Ctrl-C/SIGTERM: finish the inputs' current frames, keep what is done. A second one: leave now.
    if _INTERRUPT.is_set():
        raise KeyboardInterrupt
    _INTERRUPT.set()


def _cmd_batch(args: argparse.Namespace) -> int:
    from stream.batch.inputs import find_inputs
    from stream.batch.job import BatchOptions, check_options, run_batch
    from stream.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK
    from stream.contract import printable

    config = load_config(args.config)
    providers = [s.strip().lower() for s in args.providers.split(",") if s.strip()] if args.providers else None
    # Absolute: Ray workers run in another folder.
    model, detector = (p.absolute() if p is not None else None for p in (args.model, args.detector))
    config = config.with_overrides({"classifier.model": model, "detector.model": detector,
                                    "runtime.providers": providers})
    options = BatchOptions(video=args.video, csv=args.csv, parallel=args.parallel, progress=not args.no_progress,
                           max_frames=args.max_frames, ray=args.ray, workers=args.workers,
                           cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                           interrupt=_INTERRUPT)
    check_options(options)
    inputs, warnings = find_inputs(args.inputs, exclude=args.out)
    for warning in warnings:
        print(f"emostream: warning: {printable(warning)}", file=sys.stderr)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    report = run_batch(inputs, args.out, config, options)
    for line in report.lines():
        print(printable(line), file=sys.stderr)
    if report.was_interrupted:
        print("interrupted: finished inputs kept; run the same command again to finish the job", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT if report.failed else EXIT_OK
