"""What detecting faces on every k-th frame only (``runtime.detect_every``) costs and gains.

For each k, the clip runs through the pipeline (events on, recording off) and is
compared with k = 1: the mean IoU of each face box with the box detected on its
own frame, the share of faces whose label agrees, and frames/s of the whole run
(median of ``--repeats``).

    .venv/bin/python benchmarks/frame_skip.py --ks 1,2,3,5 --clip stream/assets/carphone_640x480.mp4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stream.boxes import pairwise_iou  # noqa: E402
from stream.capture.spec import SourceSpec  # noqa: E402
from stream.config import load_config  # noqa: E402
from stream.pipeline import Pipeline, RunOptions, load_models  # noqa: E402


def run(clip: Path, k: int, out: Path, models: object) -> tuple[list[dict], float]:
    config = load_config(None).with_overrides({"output.dir": out, "output.video": False, "output.progress": False,
                                               "runtime.detect_every": k})
    t0 = time.perf_counter()
    summary = Pipeline([SourceSpec(str(clip), name=f"k{k}")], config, RunOptions(), models).run()[0]  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    events = [json.loads(line) for line in summary.outputs[0].read_text().splitlines()]
    return events, summary.frames_processed / wall


def compare(ref: list[dict], got: list[dict]) -> tuple[float, float]:
    ious, agree, total = [], 0, 0
    for a, b in zip(ref, got, strict=True):
        if not a["faces"] or not b["faces"]:
            continue
        iou = pairwise_iou(np.array([f["box_xyxy"] for f in a["faces"]]), np.array([f["box_xyxy"] for f in b["faces"]]))
        for i, fa in enumerate(a["faces"]):
            j = int(np.argmax(iou[i]))
            ious.append(float(iou[i, j]))
            agree += fa["label"] == b["faces"][j]["label"]
            total += 1
    return float(np.mean(ious)) if ious else 0.0, agree / total if total else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ks", default="1,2,3,5")
    p.add_argument("--clip", type=Path, default=REPO / "stream" / "assets" / "carphone_640x480.mp4")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    models = load_models(load_config(None))
    with tempfile.TemporaryDirectory() as tmp:
        ref, _ = run(args.clip, 1, Path(tmp) / "ref", models)
        print("| detect every k frames | frames/s (median) | mean IoU with per-frame detection | labels agreeing |")
        print("|---|---|---|---|")
        for k in (int(x) for x in args.ks.split(",")):
            speeds = []
            for r in range(args.repeats):
                events, fps = run(args.clip, k, Path(tmp) / f"k{k}-{r}", models)
                speeds.append(fps)
            iou, agree = compare(ref, events)
            print(f"| {k} | {statistics.median(speeds):.0f} | {iou:.3f} | {100 * agree:.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
