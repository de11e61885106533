"""Capture -> result latency on a live 640x480 30 fps RTSP camera.

Serves a real RTSP stream (``tests/rtsp_server.py``, GStreamer, under the system
Python) from the carphone clip scaled to 640x480 and looped, reads it with
:class:`stream.capture.LiveSource` + :class:`stream.capture.CaptureThread`,
runs each stage and reports, per processed frame:

- **latency**: capture -> result, ``FrameResult.t_done_s - Frame.t_capture_s``
  (the definition the pipeline's summary uses);
- **age at processing**: how old the frame was when inference started on it,
  counted from its capture (decode) time, and end to end from the moment the
  camera sent it (the server stamps its send time into the pixels; same
  machine, same clock), which adds encode, network and decode;
- frames captured, processed and dropped (the live queue keeps the newest).

Stages (``--stage``): ``capture`` (no inference: the floor), ``infer`` (the
default: the real :class:`stream.infer.InferenceThread` with the real models),
``pipeline`` (``stream.pipeline.run`` as ``emostream run`` does it, with the
annotated video and the event log written; only its summary's latencies).
A custom step plugs in through :func:`measure` (``process=``).

    .venv/bin/python benchmarks/latency.py --seconds 20 --json out/latency.json

This is a benchmark, not a test: numbers depend on the machine (and the
server's H.264 encoding shares its CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _clips import make_scaled_clip  # noqa: E402

from stream.capture import CaptureThread, LiveSource  # noqa: E402
from stream.config import Config, load_config  # noqa: E402
from stream.infer.stage import take_batch  # noqa: E402
from stream.records import EndOfStream, Frame, FrameResult, StageError  # noqa: E402
from tests.rtsp_fixtures import RtspServer, gstreamer_missing  # noqa: E402
from tests.rtsp_server import read_stamp  # noqa: E402

STALE_MS = 100.0
#: A plug-in step: takes a batch of frames, returns one ``t_done_s`` (perf_counter) per frame.
Process = Callable[[list[Frame]], Sequence[float]]


@dataclass
class Report:
    """What one run measured; times in milliseconds."""

    stage: str
    seconds: float
    size_wh: tuple[int, int]
    fps: float
    transport: str
    captured: int = 0
    processed: int = 0
    dropped: int = 0
    duplicates: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    age_at_processing_ms: dict[str, float] = field(default_factory=dict)
    e2e_age_at_processing_ms: dict[str, float] = field(default_factory=dict)
    stale_frames_processed: int = 0
    stale_frames_processed_e2e: int = 0
    throughput_fps: float = 0.0
    machine: str = ""
    command: str = ""


def _stats(values_ms: Sequence[float]) -> dict[str, float]:
    if not len(values_ms):
        return {}
    v = np.asarray(values_ms, np.float64)
    return {
        "p50": float(np.percentile(v, 50)),
        "p95": float(np.percentile(v, 95)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
        "mean": float(v.mean()),
    }


class _TimedDetector:
    """Wraps the detector to note when inference starts on each batch (production code path)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.batches: list[tuple[float, int]] = []

    def detect(self, images_bgr: list[np.ndarray]) -> object:
        self.batches.append((time.perf_counter(), len(images_bgr)))
        return self.inner.detect(images_bgr)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def measure(
    url: str, config: Config, seconds: float, process: Process | None = None, stage: str = "custom"
) -> tuple[Report, list[dict[str, float]]]:
    """Read ``url`` for ``seconds``; run ``process`` on what the live queue holds (batches).

    With ``process=None`` and ``stage="infer"`` the real inference stage runs; with
    ``process=None`` otherwise, frames are only taken (capture floor).

    Returns:
        The report and one row per processed frame.
    """
    source = LiveSource(url, config.capture)
    source.open()
    stop = threading.Event()
    capture = CaptureThread(source, config.capture.live_buffer, stop)
    # perf_counter -> Unix time, to compare with the server's stamps.
    wall_offset = time.time() - time.perf_counter()
    rows: list[dict[str, float]] = []
    t_end = time.perf_counter() + seconds
    inference = None
    timed: _TimedDetector | None = None
    try:
        if stage == "infer" and process is None:
            from stream.infer import InferenceThread
            from stream.pipeline import load_models
            from stream.track import IouTracker

            models = load_models(config)
            timed = _TimedDetector(models.detector)
            capture.start()
            inference = InferenceThread(
                capture.frames,
                timed,  # type: ignore[arg-type]  # a FaceDetector that notes batch start times
                models.classifier,
                IouTracker.from_config(config.tracking),
                config.runtime.batch_size,
                config.runtime.result_queue_size,
                stop,
            ).start()
            done = 0
            while time.perf_counter() < t_end:
                try:
                    item = inference.results.get(timeout=0.1)
                except queue.Empty:
                    continue
                if isinstance(item, StageError):
                    raise item.error
                if isinstance(item, EndOfStream):
                    break
                result: FrameResult = item
                t_start = _batch_start(timed.batches, done)
                done += 1
                rows.append(_row(result.frame, t_start, result.t_done_s, wall_offset))
        else:
            capture.start()
            while time.perf_counter() < t_end:
                batch, end = take_batch(capture.frames, config.runtime.batch_size, stop, timeout_s=0.1)
                if isinstance(end, StageError):
                    raise end.error
                if not batch:
                    if end is not None:
                        break
                    continue
                t_start = time.perf_counter()
                t_done = process(batch) if process is not None else [time.perf_counter()] * len(batch)
                rows.extend(_row(f, t_start, td, wall_offset) for f, td in zip(batch, t_done, strict=True))
    finally:
        stop.set()
        capture.close()
        if inference is not None:
            inference.join()
    report = _report(stage, seconds, source, config, rows)
    report.captured, report.dropped = capture.captured, capture.dropped
    return report, rows


def _busy(work_ms: float) -> Process:
    """A plug-in step that holds each batch for ``work_ms`` (a slow model)."""

    def process(frames: list[Frame]) -> list[float]:
        time.sleep(work_ms / 1000.0)
        return [time.perf_counter()] * len(frames)

    return process


def _batch_start(batches: list[tuple[float, int]], index: int) -> float:
    for t_start, n in batches:
        if index < n:
            return t_start
        index -= n
    return float("nan")


def _row(frame: Frame, t_start: float, t_done: float, wall_offset: float) -> dict[str, float]:
    stamp = read_stamp(frame.image_bgr)
    row = {
        "index": frame.index,
        "t_media_s": frame.t_media_s,
        "latency_ms": (t_done - frame.t_capture_s) * 1000.0,
        "age_ms": (t_start - frame.t_capture_s) * 1000.0,
        "e2e_age_ms": float("nan"),
        "seq": -1.0,
    }
    if stamp is not None:
        row["e2e_age_ms"] = (t_start + wall_offset) * 1000.0 - stamp[0]
        row["seq"] = float(stamp[1])
    return row


def _report(stage: str, seconds: float, source: LiveSource, config: Config, rows: list[dict[str, float]]) -> Report:
    report = Report(stage, seconds, source.size_wh, source.fps, config.capture.rtsp_transport)
    report.processed = len(rows)
    report.throughput_fps = len(rows) / seconds
    lat = [r["latency_ms"] for r in rows]
    age = [r["age_ms"] for r in rows]
    e2e = [r["e2e_age_ms"] for r in rows if not np.isnan(r["e2e_age_ms"])]
    seqs = [int(r["seq"]) for r in rows if r["seq"] >= 0]
    report.duplicates = len(seqs) - len(set(seqs))
    report.latency_ms, report.age_at_processing_ms = _stats(lat), _stats(age)
    report.e2e_age_at_processing_ms = _stats(e2e)
    report.stale_frames_processed = sum(a > STALE_MS for a in age)
    report.stale_frames_processed_e2e = sum(a > STALE_MS for a in e2e)
    return report


def measure_pipeline(
    url: str, config: Config, seconds: float, out_dir: Path, size_wh: tuple[int, int], fps: float
) -> Report:
    """The pipeline on the stream, as ``emostream run URL --max-seconds S --no-display`` does."""
    from stream.pipeline import Pipeline, RunOptions, SourceSpec

    spec = SourceSpec(url, output=out_dir / "live.annotated.mp4", events=out_dir / "live.events.jsonl")
    (summary,) = Pipeline([spec], config.with_overrides({"output.progress": False}),
                          RunOptions(display=False, max_seconds=seconds)).run()
    if summary.error is not None:
        raise summary.error
    report = Report("pipeline", seconds, size_wh, fps, config.capture.rtsp_transport)
    report.captured, report.processed, report.dropped = (
        summary.frames_captured,
        summary.frames_processed,
        summary.frames_dropped,
    )
    report.latency_ms = _stats(summary.latencies_ms)
    report.duplicates = -1  # not measured: the pipeline keeps no pixels
    report.throughput_fps = summary.fps
    return report


def _table(report: Report) -> str:
    def line(name: str, s: dict[str, float]) -> str:
        if not s:
            return f"  {name:<34} -"
        return f"  {name:<34} p50 {s['p50']:6.1f}  p95 {s['p95']:6.1f}  p99 {s['p99']:6.1f}  max {s['max']:6.1f}"

    out = [
        f"stage {report.stage}: {report.size_wh[0]}x{report.size_wh[1]} @ {report.fps:g} fps over RTSP/"
        f"{report.transport}, {report.seconds:g} s  [{report.machine}]",
        f"  frames: {report.captured} captured, {report.processed} processed, {report.dropped} dropped, "
        f"{report.duplicates if report.duplicates >= 0 else 'n/a'} processed twice; "
        f"{report.throughput_fps:.1f} processed/s",
        line("capture -> result latency (ms)", report.latency_ms),
        line("age at processing, capture (ms)", report.age_at_processing_ms),
        line("age at processing, camera send (ms)", report.e2e_age_at_processing_ms),
    ]
    if report.age_at_processing_ms:
        out.append(
            f"  frames older than {STALE_MS:g} ms when processed: {report.stale_frames_processed} "
            f"(from capture), {report.stale_frames_processed_e2e} (from camera send)"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--stage", choices=("capture", "infer", "pipeline", "all"), default="all")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--clip", type=Path, help="clip to loop (default: carphone scaled to --size)")
    parser.add_argument("--testsrc", action="store_true", help="serve a test pattern instead of a clip")
    parser.add_argument("--transport", choices=("tcp", "udp"), default="tcp")
    parser.add_argument("--config", type=Path, help="config.yaml (capture, runtime sections)")
    parser.add_argument("--json", type=Path, help="write the reports (and per-frame rows) here")
    parser.add_argument(
        "--work-ms",
        type=float,
        default=0.0,
        help="capture stage: a stand-in step that takes this long per batch (shows newest-frame dropping)",
    )
    args = parser.parse_args(argv)
    missing = gstreamer_missing()
    if missing:
        print(f"benchmark: {missing}", file=sys.stderr)
        return 2
    w, h = (int(v) for v in args.size.lower().split("x"))
    config = load_config(args.config).with_overrides({"capture.rtsp_transport": args.transport})
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} {platform.python_version()}"
    )
    command = "python benchmarks/latency.py " + " ".join(sys.argv[1:] if argv is None else argv)
    stages = ["capture", "infer", "pipeline"] if args.stage == "all" else [args.stage]
    reports, per_frame = [], {}
    with tempfile.TemporaryDirectory(prefix="emostream-bench-") as tmp:
        tmp_dir = Path(tmp)
        clip = args.clip or (None if args.testsrc else make_scaled_clip(tmp_dir / f"carphone_{w}x{h}.mp4", (w, h), 120))
        source_args = ("--testsrc",) if args.testsrc else ("--clip", str(clip))
        server = RtspServer(path="/cam", args=(*source_args, "--size", f"{w}x{h}", "--fps", str(args.fps)))
        try:
            server.start()
            for stage in stages:
                if stage == "pipeline":
                    report = measure_pipeline(server.url, config, args.seconds, tmp_dir, (w, h), args.fps)
                else:
                    process = _busy(args.work_ms) if stage == "capture" and args.work_ms > 0 else None
                    report, rows = measure(server.url, config, args.seconds, process=process, stage=stage)
                    per_frame[stage] = rows
                report.machine, report.command = machine, command
                reports.append(report)
                print(_table(report), flush=True)
        finally:
            server.close()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"reports": [asdict(r) for r in reports], "frames": per_frame}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
