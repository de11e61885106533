"""``emostream run [SOURCE...]``: box every face and label its emotion (``--ray``: a camera fleet)."""

from __future__ import annotations

import argparse
import contextlib
import signal
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
    batch_size,
    model_flags,
    model_overrides,
    positive_float,
    positive_int,
    print_summaries,
    say,
)
from stream.config import SAMPLE_CLIP, Config, load_config
from stream.errors import ConfigError

if TYPE_CHECKING:
    from stream.capture.spec import SourceSpec
    from stream.pipeline import RunOptions
    from stream.summary import RunSummary

__all__ = ["register", "source_specs"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``run`` to the ``emostream`` subcommands."""
    run = sub.add_parser("run", help="process a video, image, webcam or stream",
                         description="Box every face and label its emotion.")
    run.add_argument("source", nargs="*", default=[],
                     help="video files, image files, webcam indexes (0) or stream URLs, processed together in "
                          "one batched pipeline; default: the bundled sample")
    run.add_argument("--sources", type=Path, metavar="FILE.yaml",
                     help="sources file: a list of paths/URLs, or mappings with name, source, output, events, "
                          "max_frames, paced; re-read on SIGHUP (sources added and removed by name)")
    run.add_argument("--out-dir", type=Path, metavar="DIR", help="folder of the default outputs (output.dir)")
    run.add_argument("--output", type=Path,
                     help="annotated video (.mp4) or image; default: <output.dir>/<name>.annotated.*")
    run.add_argument("--events", type=Path, help="JSON Lines event log; default: <output.dir>/<name>.events.jsonl")
    model_flags(run)
    run.add_argument("--display", action=argparse.BooleanOptionalAction, default=None,
                     help="show a live window (default: for live sources when a display exists)")
    run.add_argument("--max-frames", type=positive_int, help="stop after N frames")
    run.add_argument("--max-seconds", type=positive_float, help="stop after S seconds (exit 0)")
    run.add_argument("--batch-size", type=batch_size, help="frames per inference batch (runtime.batch_size)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--report", action="store_true",
                     help="also write the HTML report (and PNGs) to <name>.report/ beside the event log")
    run.add_argument("--mqtt", metavar="URL",
                     help="also publish faces, episodes and health to an MQTT broker: mqtt://[user@]host[:port]/prefix "
                          "(mqtt.url; the password in $EMOSTREAM_MQTT_PASSWORD; README 'MQTT')")
    run.add_argument("--metrics", type=metrics_address, metavar="[HOST:]PORT",
                     help="serve Prometheus metrics of every source at http://HOST:PORT/metrics (HOST default "
                          "127.0.0.1; any other HOST shows the numbers and source names to the network, without a "
                          "token); needs the serve extra")
    run.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                     help="camera fleet: the sources run on Ray actors (the cluster at ADDRESS, else RAY_ADDRESS, "
                          "else a local Ray); event logs and health gathered here; no annotated video")
    run.add_argument("--sources-per-worker", type=positive_int, default=4, metavar="N",
                     help="with --ray: sources per Ray actor, one batched pipeline each (default 4)")
    run.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from stream.pipeline import Pipeline, RunOptions

    config = load_config(args.config).with_overrides({
        **model_overrides(args),
        "runtime.batch_size": args.batch_size,
        "output.progress": False if args.no_progress else None,
        "output.dir": args.out_dir,
        "mqtt.url": args.mqtt,
    })
    specs = source_specs(args.source, args.sources)
    if args.output is not None or args.events is not None:
        if len(specs) > 1:
            raise ConfigError("--output and --events name one file: with several sources use --out-dir, or set "
                              "output/events per source in a --sources file")
        specs = [replace(specs[0], output=args.output or specs[0].output, events=args.events or specs[0].events)]
    display = args.display if args.display is not None else {"on": True, "off": False}.get(config.output.display)
    if args.report and args.events is None and not config.output.events:
        raise ConfigError("--report needs the event log: give --events PATH or set output.events: true")
    interrupt = Interrupt().install()
    options = RunOptions(display=display, max_frames=args.max_frames, max_seconds=args.max_seconds,
                         interrupt=interrupt.event)
    if args.ray is not None:
        return _run_fleet(args, config, specs, options)
    from stream.sinks.progress import ProgressBar

    with contextlib.ExitStack() as started:  # every sink closed (the bar cleared) before the summaries
        sinks: list[Any] = []
        if config.output.progress:
            sinks.append(started.enter_context(contextlib.closing(ProgressBar())))
        sinks += _published(args, config, started)
        if args.sources is None:
            summaries = Pipeline(specs, config, options, sinks=sinks).run()
        else:  # SIGHUP re-reads the sources file
            from stream.control import SourceControl, file_keys

            control = SourceControl(args.sources)
            pipeline = Pipeline(specs, config, options, sinks=[*sinks, control])
            control.attach(pipeline, file_keys(specs[len(args.source):], len(args.source)))
            with SighupReload(control):
                summaries = pipeline.run()
    if len(summaries) == 1 and summaries[0].error is not None:
        raise summaries[0].error  # one source: its failure is the run's one error line
    failed = print_summaries(summaries, config, report=args.report)
    if any(s.interrupted for s in summaries):
        say("interrupted: outputs finalised")
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT if failed else EXIT_OK


def metrics_address(text: str) -> tuple[str, int]:
    """``--metrics``: ``PORT`` or ``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536 or (sep and not host):
        raise argparse.ArgumentTypeError(f"expected PORT or HOST:PORT with a port from 1 to 65535, got {text!r}")
    return host, int(port)


def _published(args: argparse.Namespace, config: Config, started: contextlib.ExitStack) -> list[Any]:
    """The sinks that send results elsewhere (``--mqtt``, ``--metrics``), started; ``started`` stops them.

    Raises:
        ConfigError: An extra is missing, or the metrics address cannot be bound.
    """
    if not config.mqtt.url and args.metrics is None:
        return []
    from stream.contract import ModelContract

    labels = ModelContract.from_onnx(config.classifier.model).labels
    sinks: list[Any] = []
    if config.mqtt.url:
        from stream.sinks.mqtt import MqttPublisher

        sinks.append(started.enter_context(contextlib.closing(MqttPublisher.from_config(config, labels).start())))
    if args.metrics is not None:
        try:
            from stream.sinks.metrics import PipelineMetrics, serve_metrics
        except ImportError as err:
            raise ConfigError(f"--metrics needs the serve extra: pip install 'emostream[serve]' "
                              f"({err.name} is missing)") from None
        metrics = PipelineMetrics(labels, uncertain_below=config.classifier.uncertain_below)
        host, port = args.metrics
        try:
            server = serve_metrics(metrics, host, port)
        except OSError as err:
            raise ConfigError(f"--metrics {host}:{port}: cannot listen there: {err.strerror or err}") from None
        started.callback(server.server_close)
        started.callback(server.shutdown)
        say(f"metrics: http://{f'[{host}]' if ':' in host else host}:{port}/metrics")
        sinks.append(metrics)
    return sinks


def source_specs(sources: list[str], sources_file: Path | None) -> list[SourceSpec]:
    """The sources of a command: arguments, then the sources file; the bundled sample without either."""
    from stream.capture.spec import SourceSpec, load_sources  # OpenCV: imported after the signal handlers

    specs = [SourceSpec(s) for s in sources]
    if sources_file is not None:
        specs += load_sources(sources_file)
    if not specs:
        if not SAMPLE_CLIP.is_file():
            raise ConfigError(f"the bundled sample '{SAMPLE_CLIP}' is missing: reinstall emostream or give a SOURCE")
        specs = [SourceSpec(str(SAMPLE_CLIP))]
    return specs


def _run_fleet(args: argparse.Namespace, config: Config, specs: list[SourceSpec], run_options: RunOptions) -> int:
    """``emostream run ... --ray [ADDRESS]``: the sources on Ray actors; health lines, then the summaries."""
    from stream.fleet import FleetOptions, run_fleet

    if args.output is not None or args.display:
        raise ConfigError("--ray runs cameras on Ray workers: no --output (annotated video is off for fleets) "
                          "and no --display")
    from stream.control import file_keys

    reload = threading.Event()  # SIGHUP (a handler may only set it): the driver re-reads the sources file
    options = FleetOptions(ray=args.ray, sources_per_worker=args.sources_per_worker,
                           max_seconds=run_options.max_seconds, max_frames=run_options.max_frames,
                           interrupt=run_options.interrupt,
                           health_every_s=5.0 if args.verbose else 30.0,
                           sources_file=args.sources, reload=reload,
                           file_keys=file_keys(specs[len(args.source):], len(args.source)) if args.sources else {})
    n = len(specs)
    workers = -(-n // options.sources_per_worker)
    say(f"fleet: {n} camera(s) on {workers} Ray worker(s), {options.sources_per_worker} per worker; event logs "
        f"written here, in {config.output.dir.absolute()} (annotated video is off for fleets)")

    def health(lines: list[str]) -> None:
        for line in lines:
            say(f"health: {line}")

    if args.sources is not None:
        signal.signal(signal.SIGHUP, lambda signum, frame: reload.set())
    with contextlib.ExitStack() as started:
        result = run_fleet(specs, config, options, on_health=health, on_reload=say,
                           sinks=_published(args, config, started))
    restarts = dict(zip((s.source_id for s in result.summaries), result.restarts, strict=True))

    def restart_line(summary: RunSummary) -> list[str]:
        n = restarts[summary.source_id]
        return [f"restarts: {n} (its worker died; resumed on a new one)"] if n else []

    failed = print_summaries(result.summaries, config, report=args.report, extra=restart_line)
    if any(s.interrupted for s in result.summaries):
        say("interrupted: event logs finalised")
        return EXIT_INTERRUPTED
    return EXIT_BAD_INPUT if failed else EXIT_OK
