"""Capture -> result latency on a live 640x480 30 fps RTSP camera.

Serves a real RTSP stream (``tests/rtsp_server.py``, GStreamer, under the system
Python) from the carphone clip scaled to 640x480 and looped, reads it through the
public pipeline API as ``emostream run URL`` does::

    with Pipeline([url], config, RunOptions(display=False, ...), models) as pipeline:
        for result in pipeline: ...

and reports, per processed frame:

- **latency**: capture -> result, :attr:`stream.records.FrameResult.latency_ms`
  (``t_done_s - frame.t_capture_s``, the definition the pipeline's summary uses);
- **age at processing**: how old the frame was when the detector started on it
  (the detector handed to the pipeline is wrapped to note that time), counted from
  its capture (decode) time, and end to end from the moment the camera sent it (the
  server stamps its send time into the pixels; same machine, same clock), which adds
  encode, network and decode;
- frames captured, processed and dropped (the pipeline's summary; the live queue
  keeps the newest).

Stages (``--stage``, default ``all``), each one pipeline run:

- ``capture``: no model work (a detector that finds no face, after ``--work-ms`` of
  sleep per batch): the floor of capture thread, live queue, batching and hand-off;
- ``infer``: the real models, nothing recorded (``output.video``/``output.events`` off);
- ``pipeline``: the real models with the annotated video and the event log written
  (to a temporary folder), as ``emostream run`` does by default.

A custom step plugs in through :func:`measure` (``models=``: any detector/classifier pair).

    .venv/bin/python benchmarks/latency.py --seconds 20 --json out/latency.json

This is a benchmark, not a test: numbers depend on the machine (and the
server's H.264 encoding shares its CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _clips import make_scaled_clip  # noqa: E402

from stream.config import Config, load_config  # noqa: E402
from stream.pipeline import Models, Pipeline, RunOptions, load_models  # noqa: E402
from stream.records import FrameResult  # noqa: E402
from tests.rtsp_fixtures import RtspServer, gstreamer_missing  # noqa: E402
from tests.rtsp_server import read_stamp  # noqa: E402

STALE_MS = 100.0
#: The test server stamps the top 16 rows of each frame; they are copied before anything draws on it.
STAMP_ROWS = 16
#: The pipeline's own ``max_seconds`` is only a guard (a camera that never comes up): this much past the window.
OPEN_GRACE_S = 30.0


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
    v = np.asarray(values_ms, np.float64)
    v = v[~np.isnan(v)]
    if not v.size:
        return {}
    return {
        "p50": float(np.percentile(v, 50)),
        "p95": float(np.percentile(v, 95)),
        "p99": float(np.percentile(v, 99)),
        "max": float(v.max()),
        "mean": float(v.mean()),
    }


class _TimedDetector:
    """Wraps the detector the pipeline is given: notes when inference starts on each frame.

    Keyed by the image object (the inference stage hands the detector each frame's own
    ``image_bgr``), which it keeps until :meth:`take`. The stamp rows are copied here, before
    the outputs draw on the frame in place (the recording stage).
    """

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self._started: dict[int, tuple[float, np.ndarray, np.ndarray]] = {}

    def detect(self, images_bgr: list[np.ndarray], still: Sequence[bool] | None = None,
               sources: Sequence[int] | None = None, prescaled: Sequence[np.ndarray | None] | None = None) -> object:
        t_start = time.perf_counter()
        for image in images_bgr:
            self._started[id(image)] = (t_start, image, image[:STAMP_ROWS].copy())
        return self.inner.detect(images_bgr, still, sources, prescaled)  # type: ignore[attr-defined]

    def take(self, image: np.ndarray) -> tuple[float, np.ndarray | None]:
        """When the detector started on ``image`` (NaN: it did not, e.g. ``detect_every`` > 1) and its stamp rows."""
        t_start, _, rows = self._started.pop(id(image), (float("nan"), None, None))
        return t_start, rows

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


class _NoFaces:
    """A detector that finds no face, after ``work_ms`` per batch (a stand-in slow model)."""

    def __init__(self, work_ms: float = 0.0) -> None:
        self.work_ms = work_ms

    def detect(self, images_bgr: list[np.ndarray], still: Sequence[bool] | None = None,
               sources: Sequence[int] | None = None, prescaled: object = None) -> list[list[object]]:
        if self.work_ms > 0:
            time.sleep(self.work_ms / 1000.0)
        return [[] for _ in images_bgr]


def measure(
    url: str,
    config: Config,
    seconds: float,
    models: Models,
    stage: str = "custom",
    *,
    fps: float = 0.0,
    record_dir: Path | None = None,
) -> tuple[Report, list[dict[str, float]]]:
    """Run the pipeline on ``url`` with ``models`` for ``seconds`` from its first result.

    Args:
        url: The live stream.
        config: The configuration; its outputs are overridden here (no progress bar).
        seconds: How long to measure, from the first frame's capture.
        models: The detector and classifier (the real ones, or any stand-in with ``detect``).
        stage: The report's name.
        fps: The stream's frame rate, for the report.
        record_dir: Write the annotated video and the event log here (None: record nothing).

    Returns:
        The report and one row per processed frame.
    """
    with tempfile.TemporaryDirectory(prefix="emostream-latency-") as tmp:
        record = record_dir is not None
        config = config.with_overrides({
            "output.video": record,
            "output.events": record,
            "output.dir": str(record_dir if record else tmp),
            "output.progress": False,
        })
        timed = _TimedDetector(models.detector)
        # perf_counter -> Unix time, to compare with the server's stamps.
        wall_offset = time.time() - time.perf_counter()
        rows: list[dict[str, float]] = []
        size_wh = (0, 0)
        options = RunOptions(display=False, max_seconds=seconds + OPEN_GRACE_S)
        with Pipeline([url], config, options, Models(timed, models.classifier)) as pipeline:  # type: ignore[arg-type]
            t_end: float | None = None
            for result in pipeline:
                t_start, stamp_rows = timed.take(result.frame.image_bgr)
                rows.append(_row(result, t_start, stamp_rows, wall_offset))
                if t_end is None:
                    t_end, size_wh = result.frame.t_capture_s + seconds, result.frame.size_wh
                if time.perf_counter() >= t_end:
                    break
        (summary,) = pipeline.summaries
    if summary.error is not None:
        raise summary.error
    report = _report(stage, seconds, size_wh, fps, config, rows)
    report.captured, report.dropped = summary.frames_captured, summary.frames_dropped
    return report, rows


def _row(result: FrameResult, t_start: float, stamp_rows: np.ndarray | None, wall_offset: float) -> dict[str, float]:
    frame = result.frame
    stamp = read_stamp(stamp_rows) if stamp_rows is not None else None
    row = {
        "index": frame.index,
        "t_media_s": frame.t_media_s,
        "latency_ms": result.latency_ms,
        "age_ms": (t_start - frame.t_capture_s) * 1000.0,
        "e2e_age_ms": float("nan"),
        "seq": -1.0,
    }
    if stamp is not None:
        row["e2e_age_ms"] = (t_start + wall_offset) * 1000.0 - stamp[0]
        row["seq"] = float(stamp[1])
    return row


def _report(stage: str, seconds: float, size_wh: tuple[int, int], fps: float, config: Config,
            rows: list[dict[str, float]]) -> Report:
    report = Report(stage, seconds, size_wh, fps, config.capture.rtsp_transport)
    report.processed = len(rows)
    report.throughput_fps = len(rows) / seconds
    age = [r["age_ms"] for r in rows if not np.isnan(r["age_ms"])]
    e2e = [r["e2e_age_ms"] for r in rows if not np.isnan(r["e2e_age_ms"])]
    seqs = [int(r["seq"]) for r in rows if r["seq"] >= 0]
    report.duplicates = len(seqs) - len(set(seqs))
    report.latency_ms = _stats([r["latency_ms"] for r in rows])
    report.age_at_processing_ms, report.e2e_age_at_processing_ms = _stats(age), _stats(e2e)
    report.stale_frames_processed = sum(a > STALE_MS for a in age)
    report.stale_frames_processed_e2e = sum(a > STALE_MS for a in e2e)
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
        f"{report.duplicates} processed twice; {report.throughput_fps:.1f} processed/s",
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
        help="capture stage: the stand-in detector takes this long per batch (shows newest-frame dropping)",
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
    models = load_models(config)  # once, warmed up; the capture stage uses only its classifier's labels
    reports, per_frame = [], {}
    with tempfile.TemporaryDirectory(prefix="emostream-bench-") as tmp:
        tmp_dir = Path(tmp)
        clip = args.clip or (None if args.testsrc else make_scaled_clip(tmp_dir / f"carphone_{w}x{h}.mp4", (w, h), 120))
        source_args = ("--testsrc",) if args.testsrc else ("--clip", str(clip))
        server = RtspServer(path="/cam", args=(*source_args, "--size", f"{w}x{h}", "--fps", str(args.fps)))
        try:
            server.start()
            for stage in stages:
                stage_models = Models(_NoFaces(args.work_ms), models.classifier) if stage == "capture" else models  # type: ignore[arg-type]
                record_dir = tmp_dir / "recorded" if stage == "pipeline" else None
                report, rows = measure(server.url, config, args.seconds, stage_models, stage, fps=args.fps,
                                       record_dir=record_dir)
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
