"""Milliseconds per face of emotion classifiers, as the stream runs them (ONNX Runtime, CPU, its thread count).

Each model classifies batches of real-sized uint8 crops through
:class:`stream.infer.EmotionClassifier` (normalisation included); the median of
``--repeats`` timed batches, after warm-up, divided by the batch size.

    .venv/bin/python benchmarks/classifier_speed.py models/*.onnx --batch-size 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stream.infer import EmotionClassifier  # noqa: E402
from stream.infer.session import auto_threads  # noqa: E402


def ms_per_face(path: Path, batch: int, repeats: int, threads: int) -> tuple[float, float]:
    """(median, best) milliseconds per face (a small model's cost varies run to run on a shared machine)."""
    clf = EmotionClassifier.from_path(path, ("cpu",), threads)
    w, h = clf.contract.input_size_wh
    shape = (batch, h, w) if clf.contract.color == "gray" else (batch, h, w, 3)
    crops = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for _ in range(10):
        clf.classify(crops)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        clf.classify(crops)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / batch, 1000 * min(times) / batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: the stream's default)")
    args = p.parse_args(argv)
    threads = args.threads or auto_threads()
    print(f"| model | ms per face at batch {args.batch_size} (median) | best | threads |")
    print("|---|---|---|---|")
    for path in args.models:
        median, best = ms_per_face(path, args.batch_size, args.repeats, threads)
        print(f"| {path.name} | {median:.3f} | {best:.3f} | {threads} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
