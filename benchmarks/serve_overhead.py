"""What the live dashboard adds to the pipeline's CPU time per frame (issue 9: at most +10 %).

One 640x480 source: the bundled clip played as a live camera (30 fps, looped), with the
outputs ``emostream serve`` writes (annotated video + event log). Two modes, alternated
``--repeats`` times, each measured over ``--seconds`` after ``--warmup`` seconds:

- ``pipeline``: ``Pipeline`` alone;
- ``dashboard``: the same with the :class:`~stream.serve.Dashboard` sink and the uvicorn
  server in this process, and one client (a subprocess, not counted) pulling the MJPEG
  stream at ``--stream-fps`` and the Server-Sent Events, as the page does.

CPU time is this process's (all its threads: capture, inference, sinks, server, JPEG
encoding), from ``time.process_time()``; per frame = CPU seconds / frames processed in
the window. Machine load from other processes is reported, as it skews both modes.

    .venv/bin/python benchmarks/serve_overhead.py --seconds 15 --repeats 2 --stream-fps 10,30
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stream.capture.spec import SourceSpec  # noqa: E402
from stream.config import load_config  # noqa: E402
from stream.pipeline import Models, Pipeline, RunOptions, load_models  # noqa: E402
from stream.summary import RunSummary  # noqa: E402

CLIP = REPO / "stream" / "assets" / "carphone_640x480.mp4"

#: The client: pulls the MJPEG stream and the event stream until killed, counting what it got.
_CLIENT = r"""
import http.client, sys, threading
port, fps = int(sys.argv[1]), sys.argv[2]
def pull(path, out):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("GET", path)
    r = conn.getresponse()
    while True:
        chunk = r.read1(65536)
        if not chunk:
            return
        out[0] += chunk.count(b"--frame\r\n")
frames, events = [0], [0]
threading.Thread(target=pull, args=("/api/events/stream", events), daemon=True).start()
pull(f"/stream/0.mjpg?fps={fps}", frames)
"""


class _Probe:
    """Keeps the run's summaries (a sink that does nothing per frame)."""

    def __init__(self) -> None:
        self.summaries: list[RunSummary] = []
        self.started = threading.Event()

    def on_start(self, summaries: list[RunSummary]) -> None:
        self.summaries = summaries
        self.started.set()

    def on_result(self, result: object, summary: RunSummary) -> None:
        pass

    def on_source_end(self, summary: RunSummary) -> None:
        pass


def _others_busy() -> tuple[float, float]:
    """(all cores' busy seconds, this process's CPU seconds), for the load of other processes."""
    with open("/proc/stat") as f:
        parts = [float(x) for x in f.readline().split()[1:]]
    busy = (sum(parts) - parts[3] - parts[4]) / 100.0
    return busy, time.process_time()


def _thread_cpu_s() -> dict[str, float]:
    """CPU seconds per Python thread name (summed), from /proc/self/task (10 ms ticks)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        name = names.get(int(task.name), "other")
        name = "anyio worker" if name.startswith("AnyIO worker") else name
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / 100.0
    return out


def measure(models: Models, out_dir: Path, dashboard: bool, seconds: float, warmup: float, stream_fps: float) -> dict:
    config = load_config(None).with_overrides({"output.dir": out_dir, "output.progress": False})
    interrupt = threading.Event()
    probe = _Probe()
    sinks: list = [probe]
    server = client = None
    if dashboard:
        from stream.serve import Dashboard, DashboardServer, build_app, listen

        dash = Dashboard(models.classifier.labels, ["clip"])
        sinks.append(dash)
        closing = threading.Event()
        sock = listen("127.0.0.1", 0)
        server = DashboardServer(build_app(dash, closing=closing), closing)
        threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="emostream-serve", daemon=True).start()
    pipeline = Pipeline([SourceSpec(str(CLIP), name="clip", paced=True)], config,
                        RunOptions(display=False, interrupt=interrupt), models, sinks=sinks)
    runner = threading.Thread(target=pipeline.run, daemon=True)
    runner.start()
    probe.started.wait(60)
    if dashboard:
        client = subprocess.Popen([sys.executable, "-c", _CLIENT, str(sock.getsockname()[1]), str(stream_fps)])
    time.sleep(warmup)  # a benchmark window, not a test waiting for work
    summary = probe.summaries[0]
    f0, (m0, c0), t0 = summary.frames_processed, _others_busy(), _thread_cpu_s()
    time.sleep(seconds)
    f1, (m1, c1), t1 = summary.frames_processed, _others_busy(), _thread_cpu_s()
    interrupt.set()
    runner.join(60)
    if client is not None:
        client.kill()
        client.wait()
    if server is not None:
        server.stop()
    frames, cpu_s = f1 - f0, c1 - c0
    web_s = sum(t1.get(k, 0.0) - t0.get(k, 0.0) for k in ("emostream-serve", "anyio worker"))
    return {"mode": f"dashboard, client at {stream_fps:g} fps" if dashboard else "pipeline",
            "frames": frames, "fps": round(frames / seconds, 1), "cpu_ms_per_frame": round(1000 * cpu_s / frames, 3),
            "cores_used": round(cpu_s / seconds, 2),
            "web_threads_ms_per_frame": round(1000 * web_s / frames, 3),
            "others_cores": round((m1 - m0 - (c1 - c0)) / seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the window")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode, alternated")
    parser.add_argument("--stream-fps", default="10", help="comma-separated MJPEG rates the client asks for")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rates = [float(x) for x in args.stream_fps.split(",")]
    models = load_models(load_config(None))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            rows.append(measure(models, Path(tmp), False, args.seconds, args.warmup, 0))
            for rate in rates:
                rows.append(measure(models, Path(tmp), True, args.seconds, args.warmup, rate))
            for row in rows[-1 - len(rates):]:
                print(json.dumps(row), flush=True)
    base = statistics.median(r["cpu_ms_per_frame"] for r in rows if r["mode"] == "pipeline")
    print(f"pipeline alone: {base:.3f} ms CPU per frame (median of {args.repeats})")
    for rate in rates:
        mode = f"dashboard, client at {rate:g} fps"
        value = statistics.median(r["cpu_ms_per_frame"] for r in rows if r["mode"] == mode)
        print(f"{mode}: {value:.3f} ms per frame, {100 * (value / base - 1):+.1f} %")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
