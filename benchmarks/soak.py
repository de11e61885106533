"""Soak: a long ``emostream run`` on a live RTSP camera with scheduled outages; memory and latency over time.

Serves a live RTSP stream (``tests/rtsp_server.py``, GStreamer, under the system
Python: by default the bundled carphone clip, one face in every frame, scaled to
320x240 and looped at 15 frames/s; ``--clip`` for another, ``--testsrc`` for
GStreamer's moving test pattern, which has no face), runs ``emostream run URL --max-seconds S --no-display`` on it as
a subprocess (working folder a temporary one, event log on, annotated video on
unless ``--no-record``) and meanwhile:

- every ``--outage-every`` seconds kills the server (SIGKILL: connections reset)
  for ``--outage-seconds``, then starts it again on the same port, so the run
  must reconnect; the run's ``capture.reconnect_budget_s`` is set to the outage
  plus 60 s, so a slow restart on a busy machine is not mistaken for a dead camera;
- every ``--sample-every`` seconds reads the run's resident memory (``VmRSS`` in
  ``/proc/PID/status``) and the new lines of its event log (the partial name
  ``<name>.events.partial.jsonl`` while the run is on; the open file is read on
  after the rename to the final name).

Each event line's ``t`` (seconds since the source opened) is put on the soak's
clock with the smallest ``read time - t`` seen (lines are flushed as written).
The report has one row per ``--window`` of seconds (RSS at the window's end,
capture-to-result latency p50/p95, frames processed, whether an outage fell in
it; windows start at the first processed frame), the **memory growth** (RSS at
the end minus RSS ``--warmup`` seconds after the first frame)
and the **latency drift** (p95 of the last window over p95 of the first), plus
the run's exit code and the reconnections it logged (lines with ``gap_s``).

    .venv/bin/python benchmarks/soak.py --seconds 600 --outage-every 120 --outage-seconds 10 \\
        --json runs/soak.json --plot runs/soak.png

This is a benchmark: numbers depend on the machine and on what else runs there
(the load average over the run is reported).

The fleet soak (``emostream serve`` on 8 cameras with MQTT, cameras added and removed through
the API, the broker restarted) is ``benchmarks/soak_fleet.py``; it uses :func:`read_rss_mb` from here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stream.render.outputs import partial_path  # noqa: E402
from tests.rtsp_fixtures import RtspServer, gstreamer_missing  # noqa: E402

MOUNT = "/cam"
#: The run's outputs, in the ``out`` folder of its working folder.
EVENTS, VIDEO = "soak.events.jsonl", "soak.annotated.mp4"
#: 640x480, carphone looped: one face in every frame.
CARPHONE = REPO / "stream" / "assets" / "carphone_640x480.mp4"


@dataclass
class Window:
    """One time window of the run (seconds on the soak's clock, latencies in ms)."""

    t_start_s: float
    t_end_s: float
    rss_mb: float
    frames: int
    latency_p50_ms: float
    latency_p95_ms: float
    outage: bool


@dataclass
class SoakReport:
    """What one soak measured."""

    seconds: float
    outage_every_s: float
    outage_seconds: float
    window_s: float
    warmup_s: float
    source: str
    record: bool
    exit_code: int | None = None
    survived: bool = False
    frames_processed: int = 0
    faces: int = 0
    reconnections_logged: int = 0
    outages: list[tuple[float, float]] = field(default_factory=list)
    t_first_frame_s: float = math.nan
    rss_warm_mb: float = math.nan
    rss_end_mb: float = math.nan
    rss_max_mb: float = math.nan
    memory_growth_mb: float = math.nan
    latency_p95_first_ms: float = math.nan
    latency_p95_last_ms: float = math.nan
    latency_drift: float = math.nan
    load_average: list[float] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    #: Per processed frame: ``(t_media_s, latency_ms, read_time_s, gap)`` (to summarise again).
    rows: list[tuple[float, float, float, bool]] = field(default_factory=list, repr=False)
    summary: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)
    machine: str = ""
    command: str = ""


def read_rss_mb(pid: int) -> float | None:
    """The process's resident set size in MB (``VmRSS``), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


class EventTail:
    """Reads the lines a run appends to its event log, under its partial or final name."""

    def __init__(self, partial: Path, final: Path) -> None:
        self.paths = (partial, final)
        self._file: IO[str] | None = None
        self._rest = ""
        self.faces = 0
        #: ``(t_media_s, latency_ms, read_time_s, gap)`` per line.
        self.rows: list[tuple[float, float, float, bool]] = []

    def poll(self, now_s: float) -> None:
        if self._file is None:
            for path in self.paths:
                try:
                    self._file = open(path, encoding="utf-8")  # noqa: SIM115 - closed by close()
                    break
                except FileNotFoundError:
                    continue
            else:
                return
        text = self._rest + self._file.read()
        *lines, self._rest = text.split("\n")
        for line in lines:
            if not line.strip():
                continue
            record = json.loads(line)
            self.rows.append((float(record["t"]), float(record["latency_ms"]), now_s, "gap_s" in record))
            self.faces += len(record["faces"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def summarise(report: SoakReport, rows: list[tuple[float, float, float, bool]],
              rss: list[tuple[float, float]]) -> SoakReport:
    """Fill the windows, memory growth and latency drift from the event rows and RSS samples."""
    report.rows = rows
    report.frames_processed = len(rows)
    report.reconnections_logged = sum(gap for *_, gap in rows)
    offset = min((read - t for t, _, read, _ in rows), default=0.0)
    times = np.array([t + offset for t, *_ in rows])
    latencies = np.array([lat for _, lat, *_ in rows])
    # Windows start at the first processed frame (the run's clock starts after loading the
    # models); a last stub shorter than half a window joins the window before it.
    t_first = float(times.min()) if len(times) else 0.0
    report.t_first_frame_s = round(t_first, 2)
    end_s = max([rss[-1][0] if rss else 0.0, float(times.max()) if len(times) else 0.0])
    n_windows = max(1, round((end_s - t_first) / report.window_s))
    for k in range(n_windows):
        lo = t_first + k * report.window_s
        hi = end_s + 1e-6 if k == n_windows - 1 else lo + report.window_s
        lat = latencies[(times >= lo) & (times < hi)].tolist() if len(times) else []
        in_window = [mb for t, mb in rss if lo <= t < hi and (not len(times) or t <= times.max())]
        report.windows.append(Window(
            round(lo, 1), round(hi, 1), round(in_window[-1], 1) if in_window else math.nan, len(lat),
            round(_percentile(lat, 50), 1), round(_percentile(lat, 95), 1),
            any(a < hi and b > lo for a, b in report.outages)))
    report.rss_samples = rss
    # Samples after the last frame see the run closing its outputs and freeing memory: not "the end".
    running = [(t, mb) for t, mb in rss if not len(times) or t <= times.max()] or rss
    if running:
        warm = [mb for t, mb in running if t >= t_first + report.warmup_s]
        report.rss_warm_mb = round(warm[0] if warm else running[-1][1], 1)
        report.rss_end_mb = round(running[-1][1], 1)
        report.rss_max_mb = round(max(mb for _, mb in running), 1)
        report.memory_growth_mb = round(report.rss_end_mb - report.rss_warm_mb, 1)
    with_frames = [w for w in report.windows if w.frames]
    if with_frames:
        report.latency_p95_first_ms = with_frames[0].latency_p95_ms
        report.latency_p95_last_ms = with_frames[-1].latency_p95_ms
        report.latency_drift = round(report.latency_p95_last_ms / report.latency_p95_first_ms, 2)
    return report


def soak(seconds: float, outage_every: float, outage_seconds: float, *, window_s: float = 60.0,
         warmup_s: float = 60.0, sample_every: float = 2.0, size: str = "320x240", fps: float = 15.0,
         clip: Path | None = CARPHONE, record: bool = True, log: IO[str] | None = None) -> SoakReport:
    """Run the soak (see the module docstring) and return its report.

    Args:
        seconds: Length of the run (``--max-seconds``).
        outage_every: Seconds between the starts of two outages (0: none).
        outage_seconds: How long the server stays down each time.
        window_s: Length of a report window.
        warmup_s: Memory growth is measured from the RSS sample this long after the first frame.
        sample_every: Seconds between two RSS samples and event-log reads.
        size: Stream size, ``WIDTHxHEIGHT``.
        fps: Stream frame rate.
        clip: Video file the server loops (default: carphone), or None for its test pattern.
        record: Also write the annotated video.
        log: Where to print progress (one line per sample), or None.

    Raises:
        RuntimeError: GStreamer's RTSP server is missing, or the server does not start.
    """
    missing = gstreamer_missing()
    if missing:
        raise RuntimeError(missing)
    source_args = ("--clip", str(clip)) if clip else ("--testsrc",)
    report = SoakReport(seconds, outage_every, outage_seconds, window_s, warmup_s,
                        f"{'clip ' + clip.name if clip else 'test pattern'} {size} at {fps:g} fps, RTSP/TCP", record)
    load_start = os.getloadavg()
    server = RtspServer(path=MOUNT, args=(*source_args, "--size", size, "--fps", str(fps)))
    with tempfile.TemporaryDirectory(prefix="emostream-soak-") as tmp:
        work = Path(tmp)
        config = work / "soak.yaml"
        config.write_text(
            f"capture:\n  reconnect_budget_s: {outage_seconds + 60:g}\n"
            f"output:\n  video: {'true' if record else 'false'}\n  progress: false\n"
        )
        out = work / "out"
        out.mkdir()
        events = out / EVENTS
        tail = EventTail(partial_path(events), events)
        stdout, stderr = (work / "run.out").open("w+"), (work / "run.err").open("w+")
        rss: list[tuple[float, float]] = []
        proc: subprocess.Popen[bytes] | None = None
        try:
            server.start()
            cmd = [sys.executable, "-m", "stream", "run", server.url, "--max-seconds", f"{seconds:g}",
                   "--no-display", "--config", str(config), "--events", str(events)]
            if record:
                cmd += ["--output", str(out / VIDEO)]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, cwd=work, stdout=stdout, stderr=stderr, env=env)
            next_outage = outage_every if outage_every > 0 else math.inf
            down_until: float | None = None
            next_sample = 0.0
            while proc.poll() is None:
                now = time.monotonic() - t0
                # No outage in the last window (plus reconnection time): it is the drift's reference.
                if down_until is None and now >= next_outage and now + outage_seconds + 10 < seconds - window_s:
                    server.kill()
                    down_until = now + outage_seconds
                    report.outages.append((round(now, 1), round(down_until, 1)))
                    next_outage += outage_every
                elif down_until is not None and now >= down_until:
                    server.start()
                    report.outages[-1] = (report.outages[-1][0], round(time.monotonic() - t0, 1))
                    down_until = None
                if now >= next_sample:
                    mb = read_rss_mb(proc.pid)
                    if mb is not None:
                        rss.append((round(now, 2), mb))
                    tail.poll(now)
                    next_sample += sample_every
                    if log is not None:
                        print(f"[{now:7.1f} s] rss {mb or math.nan:6.1f} MB, {len(tail.rows)} frames"
                              f"{', camera down' if down_until is not None else ''}", file=log, flush=True)
                time.sleep(0.2)
            tail.poll(time.monotonic() - t0)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            tail.close()
            server.close()
        report.exit_code = proc.returncode if proc is not None else None
        stdout.seek(0)
        stderr.seek(0)
        report.summary = [line.rstrip() for line in stdout if line.strip()]
        err_lines = [line.rstrip() for line in stderr if line.strip()]
        if not report.summary:  # the CLI prints its summary on stderr, after the warnings
            report.summary = [line for line in err_lines if not line.startswith("emostream:")]
        report.stderr_tail = err_lines[-20:]
        stdout.close()
        stderr.close()
    report.survived = report.exit_code == 0 and bool(report.outages) == (outage_every > 0)
    report.load_average = [round(a, 2) for a in (*load_start, *os.getloadavg())]
    report.faces = tail.faces
    return summarise(report, tail.rows, rss)


def load_report(path: Path) -> SoakReport:
    """A report saved with ``--json``, summarised again from its raw rows and samples."""
    data = json.loads(path.read_text())
    raw = {"windows", "rows", "rss_samples", "outages"}
    report = SoakReport(**{k: v for k, v in data.items() if k not in raw})
    report.outages = [(a, b) for a, b in data["outages"]]
    return summarise(report, [tuple(r) for r in data["rows"]], [(t, mb) for t, mb in data["rss_samples"]])


def table(report: SoakReport, every: int = 1) -> str:
    """The report as text: one row per window (every ``every``-th, and the last), then the figures."""
    rows = ["| window (s) | RSS (MB) | latency p50 (ms) | latency p95 (ms) | frames | outage |",
            "|---|---|---|---|---|---|"]
    for i, w in enumerate(report.windows):
        if i % every and i != len(report.windows) - 1:
            continue
        rows.append(f"| {w.t_start_s:g}-{w.t_end_s:g} | {w.rss_mb:.1f} | {w.latency_p50_ms:.1f} | "
                    f"{w.latency_p95_ms:.1f} | {w.frames} | {'yes' if w.outage else ''} |")
    rows += [
        "",
        f"source: {report.source}; run exit code {report.exit_code}; "
        f"{len(report.outages)} outage(s) of {report.outage_seconds:g} s; "
        f"{report.reconnections_logged} reconnection(s) logged; {report.frames_processed} frames processed, "
        f"{report.faces} faces",
        f"memory: RSS {report.rss_warm_mb:.1f} MB {report.warmup_s:g} s after the first frame, "
        f"{report.rss_end_mb:.1f} MB at the end "
        f"(max {report.rss_max_mb:.1f}): growth {report.memory_growth_mb:+.1f} MB",
        f"latency p95: first window {report.latency_p95_first_ms:.1f} ms, last {report.latency_p95_last_ms:.1f} ms: "
        f"drift x{report.latency_drift:.2f}",
        f"load average (1/5/15 min) at start {report.load_average[:3]}, at end {report.load_average[3:]}",
    ]
    return "\n".join(rows)


def plot(report: SoakReport, path: Path) -> None:
    """RSS, latency p50/p95 and frames/s over time, outages shaded (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 6.5), sharex=True, dpi=80)
    minutes = report.seconds >= 600
    scale = 60.0 if minutes else 1.0
    mid = [(w.t_start_s + w.t_end_s) / 2 / scale for w in report.windows]
    # From the first frame on: the climb while the models load would flatten the interesting part.
    rss = [(t, mb) for t, mb in report.rss_samples if t >= report.t_first_frame_s] or report.rss_samples
    axes[0].plot([t / scale for t, _ in rss], [mb for _, mb in rss], lw=1)
    low, high = min(mb for _, mb in rss), max(mb for _, mb in rss)
    axes[0].set_ylim(low - 10, max(high, low + 30) + 10)
    axes[0].axvline((report.t_first_frame_s + report.warmup_s) / scale, color="grey", ls=":", lw=1)
    axes[0].set_ylabel("RSS (MB)")
    axes[1].plot(mid, [w.latency_p50_ms for w in report.windows], "o-", ms=3, label="p50")
    axes[1].plot(mid, [w.latency_p95_ms for w in report.windows], "o-", ms=3, label="p95")
    axes[1].set_ylabel("latency (ms)")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(loc="upper right", fontsize=8)
    axes[2].plot(mid, [w.frames / max(w.t_end_s - w.t_start_s, 1e-9) for w in report.windows], "o-", ms=3)
    axes[2].set_ylabel("frames/s")
    axes[2].set_ylim(bottom=0)
    axes[2].set_xlabel("time (min)" if minutes else "time (s)")
    for ax in axes:
        for a, b in report.outages:
            ax.axvspan(a / scale, b / scale, color="tab:red", alpha=0.15, lw=0)
        ax.grid(alpha=0.3)
    fig.suptitle(f"soak: {report.source}; growth {report.memory_growth_mb:+.1f} MB, "
                 f"p95 drift x{report.latency_drift:.2f} (outages shaded)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="length of the run")
    parser.add_argument("--outage-every", type=float, default=120.0, help="seconds between outages (0: none)")
    parser.add_argument("--outage-seconds", type=float, default=10.0, help="how long the camera stays down")
    parser.add_argument("--window", type=float, help="report window in seconds (default: 60, or seconds/10 "
                        "for runs under 10 minutes)")
    parser.add_argument("--warmup", type=float, help="memory growth is counted from here (default: one window)")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--size", default="320x240", help="stream WIDTHxHEIGHT")
    parser.add_argument("--fps", type=float, default=15.0, help="stream frame rate")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--clip", type=Path, default=CARPHONE,
                        help="video file to serve, looped (default: the bundled carphone clip)")
    source.add_argument("--testsrc", action="store_true", help="serve a moving test pattern (no faces)")
    parser.add_argument("--no-record", action="store_true", help="no annotated video (event log only)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--plot", type=Path, help="write the plot (PNG) here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--from-json", type=Path, help="no run: print (and --plot) a report saved with --json")
    args = parser.parse_args(argv)
    if args.from_json:
        report = load_report(args.from_json)
        print(table(report))
        if args.plot:
            plot(report, args.plot)
            print(f"wrote {args.plot}")
        return 0
    window = args.window or (60.0 if args.seconds >= 600 else args.seconds / 10)
    missing = gstreamer_missing()
    if missing:
        print(f"soak: {missing}", file=sys.stderr)
        return 2
    report = soak(args.seconds, args.outage_every, args.outage_seconds, window_s=window,
                  warmup_s=args.warmup if args.warmup is not None else window, sample_every=args.sample_every,
                  size=args.size, fps=args.fps, clip=None if args.testsrc else args.clip, record=not args.no_record,
                  log=None if args.quiet else sys.stdout)
    report.machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, "
                      f"{platform.python_implementation()} {platform.python_version()}")
    report.command = "python benchmarks/soak.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(table(report))
    if report.stderr_tail and report.exit_code != 0:
        print("run's stderr (last lines):\n  " + "\n  ".join(report.stderr_tail))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(report), indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0 if report.survived else 1


if __name__ == "__main__":
    sys.exit(main())
