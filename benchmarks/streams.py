"""How many live streams one machine holds in real time: one process for N streams vs N processes.

Each stream is the bundled 640x480 clip played as a live camera
(:class:`stream.capture.PacedFileSource`: frames released at the clip's 30 fps,
looped, newest frames kept, decoding cost real). For each N, for ``--seconds``:

- ``one process``: ``Pipeline`` with N sources and one batched inference stage;
- ``N processes``: N ``emostream run`` processes, one source each, at the same time.

Events are written (the per-frame log is what the latencies are read from),
annotated video is not (``--record`` turns it on). Reported per N: aggregate
frames/s; the share of the frames the cameras delivered (N x seconds x fps) that
were processed, and of the frames captured; capture-to-result latency p50 / p95 /
max; frames processed older than 100 ms and 250 ms; cores used. A run holds real
time when >= 95 % of the delivered frames are processed, p95 <= 150 ms and no
frame older than 250 ms is processed.

    .venv/bin/python benchmarks/streams.py --counts 1,2,4,8,12,16 --seconds 20 --json out/streams.json

This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stream.capture.spec import SourceSpec  # noqa: E402
from stream.config import Config, load_config  # noqa: E402
from stream.pipeline import Pipeline, RunOptions, load_models  # noqa: E402

CLIP = REPO / "stream" / "assets" / "carphone_640x480.mp4"
RT_SHARE, RT_P95_MS, RT_MAX_MS = 0.95, 150.0, 250.0


@dataclass
class Row:
    mode: str
    streams: int
    seconds: float
    fps_total: float
    delivered: int
    captured: int
    processed: int
    share_of_delivered: float
    share_of_captured: float
    p50_ms: float
    p95_ms: float
    max_ms: float
    older_100ms: int
    older_250ms: int
    cores: float
    realtime: bool


def _cpu_s(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _row(mode: str, n: int, seconds: float, wall: float, fps: float, captured: int, latencies: list[float],
         cpu_s: float, stream_seconds: float) -> Row:
    """``stream_seconds``: the summed time the N streams were open (their cameras delivered fps x that)."""
    lat = np.asarray(latencies or [0.0])
    processed = len(latencies)
    delivered = int(stream_seconds * fps)
    share = processed / delivered if delivered else 0.0
    p95, mx = float(np.percentile(lat, 95)), float(lat.max())
    return Row(mode, n, seconds, processed / wall, delivered, captured, processed, share,
               processed / captured if captured else 0.0, float(np.percentile(lat, 50)), p95, mx,
               int((lat > 100).sum()), int((lat > 250).sum()), cpu_s / wall,
               share >= RT_SHARE and p95 <= RT_P95_MS and mx <= RT_MAX_MS)


def _latencies(events: list[Path]) -> list[float]:
    out: list[float] = []
    for path in events:
        out += [json.loads(line)["latency_ms"] for line in path.read_text().splitlines() if line.strip()]
    return out


def one_process(n: int, seconds: float, config: Config, work: Path, models: object) -> Row:
    out = work / f"one-{n}"
    cfg = config.with_overrides({"output.dir": out})
    specs = [SourceSpec(str(CLIP), name=f"cam{i}", paced=True) for i in range(n)]
    cpu0, t0 = _cpu_s(resource.RUSAGE_SELF), time.perf_counter()
    summaries = Pipeline(specs, cfg, RunOptions(max_seconds=seconds), models).run()  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    cpu = _cpu_s(resource.RUSAGE_SELF) - cpu0
    failed = [s.error for s in summaries if s.error]
    if failed:
        raise SystemExit(f"streams: a source failed: {failed[0]}")
    events = sorted(out.glob("*.events.jsonl"))
    return _row("one process", n, seconds, wall, 30.0, sum(s.frames_captured for s in summaries),
                _latencies(events), cpu, sum(s.wall_s for s in summaries))


def separate_processes(n: int, seconds: float, config_path: Path, work: Path) -> Row:
    out = work / f"sep-{n}"
    procs = []
    cpu0 = _cpu_s(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    for i in range(n):
        sources = work / f"sep-{n}-{i}.yaml"
        sources.write_text(f"- name: cam{i}\n  path: {CLIP}\n  paced: true\n")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "stream", "run", "--sources", str(sources), "--out-dir", str(out),
             "--config", str(config_path), "--no-display", "--no-progress", "--max-seconds", str(seconds)],
            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    captured, stream_seconds = 0, 0.0
    for p in procs:
        _, err = p.communicate(timeout=seconds + 120)
        if p.returncode != 0:
            raise SystemExit(f"streams: a process failed: {err.strip().splitlines()[-1:]}")
        m = re.search(r"frames: \d+ processed, (\d+) captured", err)
        captured += int(m.group(1)) if m else 0
        m = re.search(r"frames/s over ([\d.]+) s", err)
        stream_seconds += float(m.group(1)) if m else seconds
    wall = time.perf_counter() - t0
    cpu = _cpu_s(resource.RUSAGE_CHILDREN) - cpu0
    events = sorted(out.glob("*.events.jsonl"))
    # Each process runs `seconds` after its own start-up (model loading): rate over those seconds.
    return _row(f"{n} processes", n, seconds, stream_seconds / n, 30.0, captured, _latencies(events),
                cpu * seconds / wall, stream_seconds)


def table(rows: list[Row]) -> str:
    head = ("| mode | streams | frames/s | processed / delivered | processed / captured | p50 ms | p95 ms | "
            "max ms | >100 ms | >250 ms | cores | real time |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r.mode} | {r.streams} | {r.fps_total:.0f} | {100 * r.share_of_delivered:.1f}% | "
                     f"{100 * r.share_of_captured:.1f}% | {r.p50_ms:.0f} | {r.p95_ms:.0f} | {r.max_ms:.0f} | "
                     f"{r.older_100ms} | {r.older_250ms} | {r.cores:.2f} | {'yes' if r.realtime else 'no'} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for mode in ("one process", "processes"):
        sel = [r for r in rows if (r.mode == mode) == (mode == "one process")]
        if not sel:
            continue
        label = "one process, N streams" if mode == "one process" else "N processes"
        axes[0].plot([r.streams for r in sel], [100 * r.share_of_delivered for r in sel], "o-", label=label)
        axes[1].plot([r.streams for r in sel], [r.p95_ms for r in sel], "o-", label=label)
    axes[0].axhline(100 * RT_SHARE, color="gray", ls="--")
    axes[1].axhline(RT_P95_MS, color="gray", ls="--")
    axes[0].set(xlabel="streams (640x480, 30 fps)", ylabel="frames processed / delivered (%)")
    axes[1].set(xlabel="streams (640x480, 30 fps)", ylabel="latency p95 (ms)", yscale="log")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--counts", default="1,2,4,8,12,16", help="numbers of streams, comma-separated")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per run")
    p.add_argument("--mode", choices=("both", "one", "processes"), default="both")
    p.add_argument("--record", action="store_true", help="also write annotated videos")
    p.add_argument("--config", type=Path, help="base config (flags of this script override it)")
    p.add_argument("--json", type=Path, help="write the rows here")
    p.add_argument("--plot", type=Path, help="write a PNG plot here")
    args = p.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    config = load_config(args.config).with_overrides({
        "output.video": args.record, "output.events": True, "output.progress": False, "output.display": "off"})
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="emostream-streams-") as tmp:
        work = Path(tmp)
        config_path = work / "config.yaml"
        config_path.write_text(f"output:\n  video: {str(args.record).lower()}\n  events: true\n")
        models = load_models(config) if args.mode in ("both", "one") else None
        for n in counts:
            if args.mode in ("both", "one"):
                rows.append(one_process(n, args.seconds, config, work, models))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
            if args.mode in ("both", "processes"):
                rows.append(separate_processes(n, args.seconds, config_path, work))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    for mode in ("one process", "processes"):
        held = [r.streams for r in rows if (r.mode == "one process") == (mode == "one process") and r.realtime]
        print(f"largest N held in real time, {mode}: {max(held) if held else 0}")
    print(f"machine: {os.cpu_count()} cores; clip {CLIP.name} paced at 30 fps; {args.seconds:.0f} s per run; "
          f"recording {'on' if args.record else 'off'}, events on")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
