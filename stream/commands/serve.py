"""``emostream serve SOURCE... [--host H] [--port N]``: the live dashboard.

The pipeline runs in a background thread with a :class:`~stream.serve.state.Dashboard`
sink; uvicorn serves the app on the main thread (it owns SIGINT/SIGTERM while it
runs). Ctrl-C or SIGTERM: uvicorn stops, its open streams end, then the pipeline is
interrupted and finalises its outputs as ``emostream run`` does (exit 130).

The pipeline is kept open: sources are added and removed while it runs (the API and the
page's buttons, :class:`~stream.control.SourceControl`), and removing every source does not
end the server. SIGHUP (and the page's reload) re-reads the ``--sources`` file.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Interrupt,
    SighupReload,
    model_flags,
    model_overrides,
    print_summaries,
    say,
)
from stream.commands.run import source_specs
from stream.config import Config, load_config
from stream.errors import ConfigError
from stream.serve.hosts import is_loopback

if TYPE_CHECKING:
    from stream.capture.spec import SourceSpec
    from stream.control import SourceControl
    from stream.serve.state import Dashboard
    from stream.sinks.metrics import PipelineMetrics
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
                    "Server-Sent Events and a JSON API (/api/sources, /api/sources/ID/status, /api/events); "
                    "sources are added (POST /api/sources) and removed (DELETE /api/sources/ID) while it runs, "
                    "and a --sources file is re-read on SIGHUP or POST /api/sources/reload. "
                    f"Bound to anything but loopback it needs a token: ${TOKEN_ENV}, or one generated and printed "
                    "at start. Outputs are written as by 'emostream run'; Ctrl-C finalises them (exit 130).")
    p.add_argument("source", nargs="*", default=[],
                   help="webcam indexes, stream URLs or video files (played as live cameras, looped); "
                        "default: the bundled sample clip")
    p.add_argument("--sources", type=Path, metavar="FILE.yaml",
                   help="sources file (as for 'emostream run'); re-read on SIGHUP and by the page's reload button")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument("--no-pace", action="store_true",
                   help="process video files as fast as possible, once, instead of as live cameras")
    p.add_argument("--out-dir", type=Path, metavar="DIR", help="folder of the outputs (output.dir)")
    p.add_argument("--mqtt", metavar="URL",
                   help="also publish faces, episodes and health to an MQTT broker: mqtt://[user@]host[:port]/prefix "
                        "(mqtt.url; the password in $EMOSTREAM_MQTT_PASSWORD; README 'MQTT')")
    model_flags(p)
    p.set_defaults(func=_cmd_serve)


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


class _PipelineThread(threading.Thread):
    """The pipeline, off the main thread (uvicorn owns it): its dashboard, then its summaries or its error."""

    def __init__(self, specs: list[SourceSpec], config: Config, interrupt: threading.Event,
                 control: SourceControl, file_keys: dict[int, str]) -> None:
        super().__init__(name="emostream-pipeline", daemon=True)
        self.specs, self.config, self.interrupt = specs, config, interrupt
        self.control, self.file_keys = control, file_keys  # sources added and removed while it runs
        self.dashboard: Dashboard | None = None
        self.metrics: PipelineMetrics | None = None  # GET /metrics
        self.summaries: list[RunSummary] = []
        self.error: BaseException | None = None
        self.started = threading.Event()  # the sources are open, or the pipeline failed

    def run(self) -> None:
        from stream.pipeline import Pipeline, RunOptions, load_models
        from stream.serve.state import Dashboard
        from stream.sinks.metrics import PipelineMetrics

        mqtt = None
        try:
            models = load_models(self.config)
            labels, uncertain_below = models.classifier.labels, self.config.classifier.uncertain_below
            self.metrics = PipelineMetrics(labels, uncertain_below=uncertain_below)
            self.dashboard = Dashboard(labels, [s.name for s in self.specs], uncertain_below=uncertain_below)
            sinks: list[Any] = [self.dashboard, self.metrics, self.control]
            if self.config.mqtt.url:
                from stream.sinks.mqtt import MqttPublisher

                mqtt = MqttPublisher.from_config(self.config, labels).start()
                sinks.append(mqtt)
            # Kept open: removing every source does not end the server; sources can be added again.
            options = RunOptions(display=False, interrupt=self.interrupt, keep_open=True)
            pipeline = Pipeline(self.specs, self.config, options, models, sinks=sinks)
            self.control.attach(pipeline, self.file_keys)
            self.summaries = pipeline.run()
        except BaseException as err:
            self.error = err
        finally:
            self.control.close()
            if mqtt is not None:
                mqtt.close()
            self.started.set()

    def wait_started(self) -> None:
        """Until the sources are open, the pipeline failed or the interrupt was set."""
        while not self.started.wait(0.1):
            if (self.dashboard is not None and self.dashboard.started.is_set()) or self.interrupt.is_set():
                return


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from stream.serve.app import build_app
        from stream.serve.server import DashboardServer, listen
    except ImportError as err:
        raise ConfigError(f"{_EXTRA_HINT} ({err.name} is missing)") from None
    from stream.logtap import WarningTap

    interrupt = Interrupt().install()
    config = load_config(args.config).with_overrides({
        **model_overrides(args), "output.dir": args.out_dir, "output.progress": False, "mqtt.url": args.mqtt})
    specs = source_specs(args.source, args.sources)
    if not args.no_pace:
        specs = [replace(s, paced=True) for s in specs]  # only video files are affected
    from stream.capture.spec import unique_names

    specs = unique_names(specs)
    token = os.environ.get(TOKEN_ENV) or None
    token_from_env = token is not None
    if token is None and not is_loopback(args.host):
        token = secrets.token_urlsafe(24)
    from stream.control import SourceControl, file_keys

    control = SourceControl(args.sources, paced=not args.no_pace)
    keys = file_keys(specs[len(args.source):], len(args.source)) if args.sources is not None else {}
    sock = listen(args.host, args.port)
    try:
        pipeline = _PipelineThread(specs, config, interrupt.event, control, keys)
        pipeline.start()
        pipeline.wait_started()
        if pipeline.error is not None:
            raise pipeline.error
        if interrupt.event.is_set():
            pipeline.join(timeout=60)
            print_summaries(pipeline.summaries, config)
            return EXIT_INTERRUPTED
        assert pipeline.dashboard is not None  # set before the sources open
        dashboard = pipeline.dashboard
        tap = WarningTap(dashboard.note_log)
        logging.getLogger("stream").addHandler(tap)
        closing = threading.Event()
        server = DashboardServer(build_app(dashboard, token=token, closing=closing, metrics=pipeline.metrics,
                                           control=control), closing)

        def watch() -> None:  # the inference stage failed: stop serving, report it
            pipeline.join()
            if pipeline.error is not None:
                server.stop()

        threading.Thread(target=watch, name="emostream-serve-watch", daemon=True).start()
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/"
        # The token first: "dashboard on" is the line that says it is ready (scripts wait for it).
        if token is not None and not token_from_env:
            say(f"emostream serve: token (printed once): {token}  ->  {url}?token={token}")
        elif token is not None:
            say(f"emostream serve: token from ${TOKEN_ENV}: open {url}?token=...")
        say(f"emostream serve: dashboard on {url} ({len(specs)} source{'s' if len(specs) > 1 else ''}); "
            f"Ctrl-C stops it")
        try:
            with SighupReload(control):
                server.run(sockets=[sock])
        finally:
            closing.set()
            interrupt.event.set()  # uvicorn ended (Ctrl-C, SIGTERM or a failure): finalise the outputs
            pipeline.join(timeout=60)
            logging.getLogger("stream").removeHandler(tap)
        if pipeline.error is not None:
            raise pipeline.error
        failed = print_summaries(pipeline.summaries, config)
        if pipeline.is_alive():
            say("emostream: error: the pipeline did not stop within 60 s")
            return EXIT_BAD_INPUT
        if server.signalled or any(s.interrupted for s in pipeline.summaries):
            say("interrupted: outputs finalised")
            return EXIT_INTERRUPTED
        return EXIT_BAD_INPUT if failed else EXIT_OK
    finally:
        sock.close()
