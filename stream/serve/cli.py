"""``emostream serve SOURCE... [--host H] [--port N]``: the live dashboard (registered by :mod:`stream.cli`).

The pipeline runs in a background thread with a :class:`~stream.serve.state.Dashboard`
observer; uvicorn serves the app on the main thread (it owns SIGINT/SIGTERM while it
runs). Ctrl-C or SIGTERM: uvicorn stops, its open streams end, then the pipeline is
interrupted and finalises its outputs as ``emostream run`` does (exit 130).
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import secrets
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from stream.config import load_config
from stream.errors import ConfigError, StreamError

if TYPE_CHECKING:
    from stream.capture.spec import SourceSpec
    from stream.summary import RunSummary

__all__ = ["TOKEN_ENV", "is_loopback", "register"]

log = logging.getLogger(__name__)

#: Environment variable holding the dashboard's token (else one is generated when needed).
TOKEN_ENV = "EMOSTREAM_TOKEN"
_EXTRA_HINT = "emostream serve needs the serve extra: pip install 'emostream[serve]'"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``emostream`` subcommands."""
    p = sub.add_parser(
        "serve", help="live web dashboard: annotated streams, per-person emotion chart, health, events",
        description="Run the pipeline on live sources and serve a dashboard: the annotated stream of each "
                    "source (MJPEG), a live per-person emotion chart, each source's health, events as "
                    "Server-Sent Events and a JSON API (/api/sources, /api/sources/ID/status, /api/events). "
                    f"Bound to anything but loopback it needs a token: ${TOKEN_ENV}, or one generated and printed "
                    "at start. Outputs are written as by 'emostream run'; Ctrl-C finalises them (exit 130).")
    p.add_argument("source", nargs="*", default=[],
                   help="webcam indexes, stream URLs or video files (played as live cameras, looped); "
                        "default: the bundled sample clip")
    p.add_argument("--sources", type=Path, metavar="FILE.yaml", help="sources file (as for 'emostream run')")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--no-pace", action="store_true",
                   help="process video files as fast as possible, once, instead of as live cameras")
    p.add_argument("--out-dir", type=Path, metavar="DIR", help="folder of the outputs (output.dir)")
    p.add_argument("--config", type=Path, help="YAML config (see config.yaml)")
    p.add_argument("--model", type=Path, help="emotion classifier ONNX file carrying an emostream contract")
    p.add_argument("--detector", type=Path, help="BlazeFace ONNX file")
    p.set_defaults(func=_cmd_serve)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): only this machine can connect."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _specs(args: argparse.Namespace) -> list[SourceSpec]:
    from stream.capture.spec import SourceSpec, load_sources, unique_names
    from stream.cli import SAMPLE_CLIP

    specs = [SourceSpec(s) for s in args.source]
    if args.sources is not None:
        specs += load_sources(args.sources)
    if not specs:
        specs = [SourceSpec(str(SAMPLE_CLIP))]
    if not args.no_pace:
        specs = [replace(s, paced=True) for s in specs]  # only video files are affected
    return unique_names(specs)


class _Interrupt:
    """SIGINT/SIGTERM outside uvicorn: the first sets the event, a second leaves at once."""

    def __init__(self) -> None:
        self.event = threading.Event()

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.event.set()


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from stream.serve.app import build_app
        from stream.serve.server import DashboardServer, listen
    except ImportError as err:
        raise ConfigError(f"{_EXTRA_HINT} ({err.name} is missing)") from None
    from stream.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK
    from stream.logtap import WarningTap
    from stream.pipeline import Pipeline, RunOptions, load_models
    from stream.serve.state import Dashboard

    interrupt = _Interrupt()
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    config = load_config(args.config).with_overrides({
        "classifier.model": args.model, "detector.model": args.detector, "output.dir": args.out_dir,
        "output.progress": False})
    specs = _specs(args)
    token = os.environ.get(TOKEN_ENV) or None
    token_from_env = token is not None
    if token is None and not is_loopback(args.host):
        token = secrets.token_urlsafe(24)
    sock = listen(args.host, args.port)
    try:
        holder: dict[str, Any] = {}

        def run_pipeline() -> None:
            try:
                models = load_models(config)
                holder["dashboard"] = dashboard = Dashboard(models.classifier.labels, [s.name for s in specs],
                                                            uncertain_below=config.classifier.uncertain_below)
                options = RunOptions(display=False, interrupt=interrupt.event)
                holder["summaries"] = Pipeline(specs, config, options, models, observers=[dashboard]).run()
            except BaseException as err:
                holder["error"] = err
            finally:
                holder["done"] = True
                started.set()

        started = threading.Event()  # the sources are open (or the pipeline failed)
        pipeline = threading.Thread(target=run_pipeline, name="emostream-pipeline", daemon=True)
        pipeline.start()
        while not started.wait(0.1):
            dash = holder.get("dashboard")
            if dash is not None and dash.started.is_set():
                break
            if interrupt.event.is_set():
                break
        if "error" in holder:
            raise holder["error"]
        if interrupt.event.is_set():
            pipeline.join(timeout=60)
            _print_summaries(holder.get("summaries", []), config)
            return EXIT_INTERRUPTED
        dashboard: Dashboard = holder["dashboard"]
        tap = WarningTap(dashboard.note_log)
        logging.getLogger("stream").addHandler(tap)
        closing = threading.Event()
        server = DashboardServer(build_app(dashboard, token=token, closing=closing), closing)

        def watch() -> None:  # the inference stage failed: stop serving, report it
            pipeline.join()
            if "error" in holder:
                server.stop()

        threading.Thread(target=watch, name="emostream-serve-watch", daemon=True).start()
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/"
        print(f"emostream serve: dashboard on {url} ({len(specs)} source{'s' if len(specs) > 1 else ''}); "
              f"Ctrl-C stops it", file=sys.stderr, flush=True)
        if token is not None and not token_from_env:
            print(f"emostream serve: token (printed once): {token}  ->  {url}?token={token}", file=sys.stderr,
                  flush=True)
        elif token is not None:
            print(f"emostream serve: token from ${TOKEN_ENV}: open {url}?token=...", file=sys.stderr, flush=True)
        try:
            server.run(sockets=[sock])
        finally:
            closing.set()
            interrupt.event.set()  # uvicorn ended (Ctrl-C, SIGTERM or a failure): finalise the outputs
            pipeline.join(timeout=60)
            logging.getLogger("stream").removeHandler(tap)
        if "error" in holder:
            raise holder["error"]
        summaries = holder.get("summaries", [])
        _print_summaries(summaries, config)
        if pipeline.is_alive():
            print("emostream: error: the pipeline did not stop within 60 s", file=sys.stderr)
            return EXIT_BAD_INPUT
        if server.signalled or any(s.interrupted for s in summaries):
            print("interrupted: outputs finalised", file=sys.stderr)
            return EXIT_INTERRUPTED
        return EXIT_BAD_INPUT if any(s.error is not None for s in summaries) else EXIT_OK
    finally:
        sock.close()


def _print_summaries(summaries: list[RunSummary], config: Any) -> None:
    from stream.cli import _episodes_and_report
    from stream.contract import printable

    for summary in summaries:
        for line in summary.lines():
            print(f"[{summary.source_id}] {printable(line)}", file=sys.stderr)
        try:
            _episodes_and_report(summary.outputs, summary.lines(), config, False)
        except StreamError as err:
            print(f"emostream: error: episodes of source {summary.source_id}: {printable(str(err))}", file=sys.stderr)
    for summary in summaries:
        if summary.error is not None:
            print(f"emostream: error: source {summary.source_id} ({summary.source}): {printable(str(summary.error))}",
                  file=sys.stderr)
