"""Batch throughput: an archive of short clips, in-process vs a local Ray with 1 and 2 workers.

The archive is ``--clips`` copies of the carphone clip scaled to ``--size``, ``--frames``
frames each (one face in every frame). Each mode processes the whole archive
into a fresh output folder with ``stream.batch.run_batch`` (event logs and the
Parquet dataset, no annotated video unless ``--video``), ``--parallel`` inputs per
pipeline:

- ``in-process``: one pipeline in this process, models loaded before the clock starts;
- ``ray N``: N Ray actors on a local Ray started before the clock starts; the time
  includes starting the actors and loading their models (a real job pays it once);
- ``ray fixed``: a 1-input, 1-frame job on one actor: the cost of a job that does
  (almost) nothing, i.e. actor start + model load + one round trip.

Ray's overhead per file = (ray 1 wall - ray fixed) / (clips - 1) - in-process wall / clips:
what a file costs on one actor beyond what it costs in-process.

    .venv/bin/python benchmarks/batch.py                       # 40 clips of 60 frames, 640x480
    .venv/bin/python benchmarks/batch.py --clips 4 --frames 30 # a smoke run (~1 minute)

This is a benchmark, not a test: numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _clips import make_scaled_clip  # noqa: E402

from stream.batch import BatchOptions, find_inputs, run_batch  # noqa: E402
from stream.config import load_config  # noqa: E402
from stream.pipeline import load_models  # noqa: E402


def _archive(folder: Path, clips: int, frames: int, size_wh: tuple[int, int]) -> Path:
    first = make_scaled_clip(folder / "clip000.mp4", size_wh, frames)
    for i in range(1, clips):
        shutil.copyfile(first, folder / f"clip{i:03d}.mp4")
    return folder


def _job(archive: Path, out: Path, options: BatchOptions, models: Any = None) -> dict[str, Any]:
    inputs, _ = find_inputs([str(archive)])
    t0 = time.perf_counter()
    report = run_batch(inputs, out, load_config(None), options, models)
    wall = time.perf_counter() - t0
    if report.failed or report.done != len(inputs):
        raise RuntimeError(f"the job did not finish every input: {report.failed}")
    return {"files": report.done, "frames": report.frames, "wall_s": round(wall, 3),
            "files_per_s": round(report.done / wall, 2), "frames_per_s": round(report.frames / wall, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=40, help="clips in the archive (default 40)")
    parser.add_argument("--frames", type=int, default=60, help="frames per clip (default 60)")
    parser.add_argument("--size", default="640x480", help="clip size WxH (default 640x480)")
    parser.add_argument("--parallel", type=int, default=4, help="inputs per pipeline (default 4)")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to time (default 1,2)")
    parser.add_argument("--video", action="store_true", help="also write the annotated videos")
    parser.add_argument("--no-ray", action="store_true", help="in-process only")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    results: dict[str, Any] = {"clips": args.clips, "frames_per_clip": args.frames, "size": args.size,
                               "parallel": args.parallel, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="emostream-batch-bench-") as tmp:
        root = Path(tmp)
        archive = _archive(root / "archive", args.clips, args.frames, (w, h))
        base = BatchOptions(video=args.video, parallel=args.parallel, progress=False)
        models = load_models(load_config(None))
        results["in-process"] = _job(archive, root / "out-local", base, models)
        print(f"in-process: {results['in-process']}", flush=True)
        if not args.no_ray:
            import ray

            t0 = time.perf_counter()
            ray.init(include_dashboard=False, log_to_driver=False, namespace="emostream")
            results["ray_init_s"] = round(time.perf_counter() - t0, 2)
            try:
                one = root / "one"
                one.mkdir()
                shutil.copyfile(archive / "clip000.mp4", one / "clip.mp4")
                fixed = BatchOptions(progress=False, max_frames=1, ray="", workers=1)
                results["ray fixed"] = _job(one, root / "out-fixed", fixed)
                print(f"ray fixed: {results['ray fixed']}", flush=True)
                for n in (int(v) for v in args.workers.split(",")):
                    opts = BatchOptions(video=args.video, parallel=args.parallel, progress=False, ray="", workers=n)
                    results[f"ray {n}"] = _job(archive, root / f"out-ray{n}", opts)
                    print(f"ray {n}: {results[f'ray {n}']}", flush=True)
            finally:
                ray.shutdown()
            if "ray 1" in results and args.clips > 1:
                per_file = ((results["ray 1"]["wall_s"] - results["ray fixed"]["wall_s"]) / (args.clips - 1)
                            - results["in-process"]["wall_s"] / args.clips)
                results["ray_overhead_per_file_s"] = round(per_file, 4)
                print(f"Ray overhead per file: {per_file * 1000:.0f} ms", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
