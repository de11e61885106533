"""What every command shares: exit codes, argument types, the Ctrl-C handler, summaries and episodes.

Errors the user caused print one line on stderr and exit 2 (:data:`EXIT_BAD_INPUT`); the
first Ctrl-C or SIGTERM asks the work to finish its current frame and finalise its outputs
(exit 130), a second one leaves at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from stream.config import MAX_BATCH_SIZE, Config, resolve_model
from stream.contract import printable
from stream.errors import StreamError

if TYPE_CHECKING:
    from stream.control import SourceControl
    from stream.summary import RunSummary

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "EXIT_OK", "ArgumentParser", "Interrupt", "SighupReload",
           "batch_size", "episodes_and_report", "model_flags", "model_overrides", "positive_float", "positive_int",
           "print_summaries", "say"]

EXIT_OK, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 2, 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2, like every other bad-input error."""

    def error(self, message: str) -> None:  # type: ignore[override]
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
batch_size = _positive(int, f"an integer from 1 to {MAX_BATCH_SIZE}", MAX_BATCH_SIZE)


def say(line: str) -> None:
    """One line on stderr, with anything a terminal would act on made printable."""
    print(printable(line), file=sys.stderr, flush=True)


class Interrupt:
    """The SIGINT/SIGTERM handler of a command: the first signal sets :attr:`event`, a second leaves now."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def install(self) -> Interrupt:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)
        return self

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()


class SighupReload:
    """While in its ``with`` block, SIGHUP re-reads the sources file (:meth:`SourceControl.reload`).

    The handler only sets an event: the reload runs on a thread of its own, since it waits for
    the pipeline's consuming thread (the main thread in ``run``). Each reload prints one line;
    a bad file one warning line (the control's), and nothing changes.
    """

    def __init__(self, control: SourceControl) -> None:
        self.control = control
        self._hup = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emostream-sighup", daemon=True)
        self._previous: Any = None

    def __enter__(self) -> SighupReload:
        self._previous = signal.signal(signal.SIGHUP, self._on_signal)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGHUP, self._previous if self._previous is not None else signal.SIG_DFL)
        self._stop.set()
        self._thread.join(timeout=5)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._hup.set()

    def _run(self) -> None:
        from stream.control import ReloadError

        while not self._stop.is_set():
            if not self._hup.wait(0.2):
                continue
            self._hup.clear()
            try:
                result = self.control.reload()
            except ReloadError:
                continue  # the control logged its one warning line
            except StreamError as err:
                say(f"emostream: warning: sources file not reloaded: {err}")
                continue
            assert self.control.sources_file is not None
            say(result.line(self.control.sources_file))


def model_flags(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--model``, ``--detector``, ``--providers``: the flags of every command that runs the models."""
    parser.add_argument("--config", type=Path, help="YAML config (`emostream config` prints the defaults); "
                                                    "flags override it")
    parser.add_argument("--model", type=Path, help="emotion classifier: an ONNX file carrying an emostream "
                                                   "contract, or the name of a shipped one (`emostream models`)")
    parser.add_argument("--detector", type=Path, help="BlazeFace ONNX file, or a shipped one's name "
                                                      "(blazeface_short_range, blazeface_full_range)")
    parser.add_argument("--providers", help="comma-separated: tensorrt,cuda,cpu (runtime.providers)")


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config overrides of :func:`model_flags` (model paths absolute: Ray workers run in other folders)."""
    providers = getattr(args, "providers", None)
    return {
        "classifier.model": None if args.model is None else resolve_model(args.model).absolute(),
        "detector.model": None if args.detector is None else resolve_model(args.detector).absolute(),
        "runtime.providers": [p.strip().lower() for p in providers.split(",") if p.strip()] if providers else None,
    }


def print_summaries(summaries: Sequence[RunSummary], config: Config, *, report: bool = False,
                    extra: Callable[[RunSummary], list[str]] | None = None) -> bool:
    """Each source's summary lines, its episodes (and report); then one error line per failed source.

    Args:
        summaries: The run's summaries; with several, each line is prefixed by the source id.
        config: For the episode rules.
        report: Also write each source's HTML report.
        extra: More lines for a summary (a fleet's restarts).

    Returns:
        True if a source failed.
    """
    for summary in summaries:
        lines = summary.lines() + (extra(summary) if extra is not None else [])
        for line in lines:
            say(line if len(summaries) == 1 else f"[{summary.source_id}] {line}")
        try:
            episodes_and_report(summary.outputs, lines, config, report)
        except StreamError as err:
            say(f"emostream: error: episodes of source {summary.source_id}: {err}")
    failed = [s for s in summaries if s.error is not None]
    for summary in failed:
        say(f"emostream: error: source {summary.source_id} ({summary.name or summary.source}): {summary.error}")
    return bool(failed)


def episodes_and_report(outputs: Sequence[Path], run_lines: list[str], config: Config, report: bool) -> None:
    """After a run: ``<name>.episodes.jsonl`` beside its event log, and the report if asked for."""
    events = next((Path(p) for p in outputs if Path(p).suffix == ".jsonl"), None)
    if events is None or not events.is_file() or events.stat().st_size == 0:
        return  # no event log, or not one frame processed
    from stream.episodes import EventTable, derive_episodes, episodes_path, write_episodes

    table = EventTable.from_jsonl(events)
    episodes = derive_episodes(table, config.episodes)
    written = write_episodes(episodes, episodes_path(events))
    say(f"episodes: {len(episodes)} over {len(table.tracks())} track(s)")
    say(f"wrote: {written}")
    if report:
        from stream.report import write_report

        video = next((Path(p) for p in outputs if Path(p) != events), None)
        settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "training"}
        result = write_report(events, config=config.episodes, video=video, table=table, episodes=episodes,
                              run_lines=run_lines, settings=settings)
        say(f"wrote: {result.html} (+ {len(result.pngs)} PNGs)")
