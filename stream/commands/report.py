"""``emostream report EVENTS.jsonl``: per-person timelines, shares and episodes of a finished run."""

from __future__ import annotations

import argparse
from pathlib import Path

from stream.commands.common import EXIT_OK, say
from stream.config import load_config
from stream.errors import ConfigError

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``report`` to the ``emostream`` subcommands."""
    report = sub.add_parser("report", help="HTML report and PNGs of a finished run, from its event log",
                            description="Per-person emotion timelines, shares and episodes of one run: "
                                        "a self-contained HTML page plus PNGs.")
    report.add_argument("events", type=Path, help="the run's JSON Lines event log")
    report.add_argument("--out", type=Path, help="report folder; default: <name>.report/ beside the log")
    report.add_argument("--video", type=Path, help="the run's annotated video, for face thumbnails when the "
                                                   "source video is gone; default: <name>.annotated.mp4 beside it")
    report.add_argument("--config", type=Path, help="YAML config whose episodes: section sets the episode rules")
    report.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from stream.report import write_report

    config = load_config(args.config)
    if args.video is not None and not args.video.is_file():
        raise ConfigError(f"--video '{args.video}' could not be read: no such file")
    result = write_report(args.events, args.out, config=config.episodes, video=args.video)
    say(f"episodes: {result.episode_count} over {result.tracks} track(s)")
    say(f"wrote: {result.html} (+ {len(result.pngs)} PNGs, {result.episodes})")
    return EXIT_OK
