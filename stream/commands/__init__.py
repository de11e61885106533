"""The ``emostream`` command line: the top layer, above the services and the runtime.

    emostream run [SOURCE...]      box and label every face (--ray: a camera fleet)     commands/run.py
    emostream report EVENTS.jsonl  HTML report of a finished run                          commands/report.py
    emostream batch INPUTS --out   many files, one dataset (--ray: on Ray actors)         commands/batch.py
    emostream serve [SOURCE...]    live web dashboard                                     commands/serve.py
    emostream models | config      the shipped models, the default configuration          commands/tools.py
    emostream bench ...            benchmarks/fps.py of a source checkout                 commands/tools.py
    emostream train | evaluate | calibrate | export    (training extra)                   training/cli.py

Argument parsing, signal handling, summaries and exit codes live here and nowhere
below (:mod:`stream.commands.common`). Errors the user caused print one line on
stderr and exit 2; Ctrl-C or SIGTERM finalises the outputs and exits 130.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from stream.commands import batch, report, run, serve, tools
from stream.commands.common import EXIT_BAD_INPUT, EXIT_INTERRUPTED, ArgumentParser, say
from stream.errors import StreamError

__all__ = ["build_parser", "entry", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand."""
    parser = ArgumentParser(prog="emostream", description="Real-time facial-emotion recognition.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    run.register(sub)
    report.register(sub)
    tools.register(sub)
    from training.cli import register as register_training  # imports TensorFlow only when its commands run

    register_training(sub)
    batch.register(sub)
    serve.register(sub)
    return parser


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def entry() -> int:
    """The process entry point (the ``emostream`` script, ``python -m stream``): :func:`main`, then a
    shutdown no signal can cut short.

    Python puts the default signal handlers back while the interpreter shuts down, so a SIGTERM
    arriving after the outputs are final would end the process as "killed" (-15) instead of with
    its exit code. The work is done by then: ignore SIGINT and SIGTERM for the rest of the exit
    (an ignored signal is the one disposition Python leaves in place at shutdown).
    """
    code = main()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (``emostream ...``); returns the exit code."""
    # First thing: a SIGTERM during start-up (imports take ~1 s) ends like Ctrl-C, exit 130.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Everything after "bench" (--help included) belongs to benchmarks/fps.py's own parser.
        args = argparse.Namespace(command="bench", bench_args=argv[1:], func=tools.run_bench, verbose=0)
    else:
        args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="emostream: %(levelname)s: %(message)s")
    if args.verbose < 2:
        # FFmpeg's own decoder chatter ("[h264 @ 0x...] ...") is noise next to our one-line errors.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # its warnings repeat our messages
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    try:
        return int(args.func(args))
    except StreamError as err:
        say(f"emostream: error: {err}")  # printable: a path or label may hold terminal escape codes
        return EXIT_BAD_INPUT
