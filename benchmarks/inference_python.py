"""The inference stage's own CPU time per frame, outside ONNX Runtime, as it runs (issue 18's bar).

The real stage functions (``infer_batch``: detector, crops, classifier, trackers) on batches of
frames of the bundled 640x480 clip (one face), each batch of ``--batch`` frames from as many
sources (one tracker each), with the frames as the capture threads hand them over
(``Frame.prescaled`` where the code has it). The measuring thread's CPU clock
(``time.thread_time``) is read around every batch and around every ONNX Runtime call and every
OpenCV call the stage makes, so three figures come out, in ms per frame:

    outside ORT    the stage's thread time less its session calls
    OpenCV         of that, inside OpenCV calls (resize, warps, colour; they release the GIL)
    Python         the rest: Python and NumPy on small arrays (the GIL held; NMS counts here)
    prescale       the detector's scaling where the capture threads do it, timed right after each
                   decode as they do (0 for commits that scale on the inference thread)

``--parts`` also times, in place, the stage's steps outside ONNX Runtime (decoding + NMS, crops,
filling the detector's batch, tracking; the rest is the classifier's pre- and post-processing and
the per-face records), where the code has them.

ONNX Runtime's own threads are not seen by ``thread_time``: "with ORT" is this thread's share.

``--tree PATH`` measures another checkout of this repository (e.g. a ``git worktree`` of an
older commit) with the same script, so two commits are compared in the same conditions; run the
two alternately and compare medians:

    .venv/bin/python benchmarks/inference_python.py --batch 8 --repeats 7
    git worktree add /tmp/base f6e3f68
    .venv/bin/python benchmarks/inference_python.py --batch 8 --repeats 7 --tree /tmp/base

A benchmark, not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class _Clock:
    """Thread time spent inside wrapped calls, by kind."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {"ort": 0.0, "opencv": 0.0}

    def wrap(self, kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.spent[kind] = self.spent.get(kind, 0.0) + time.thread_time() - t0
        return timed


class _TimedCv2:
    """The cv2 module as the stage's modules see it, with every function call timed."""

    def __init__(self, cv2: Any, clock: _Clock) -> None:
        self._cv2, self._clock = cv2, clock

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._cv2, name)
        if callable(value) and not isinstance(value, type) and name[0].islower():
            return self._clock.wrap("opencv", value)
        return value


#: ``--parts``: (what, module, object in it or "", function), timed where they exist.
PARTS = (("decoding + NMS", "stream.infer.detect", "FaceDetector", "_candidates"),
         ("decoding + NMS", "stream.infer.detect", "FaceDetector", "_merge"),
         ("batch fill", "stream.infer.detect", "FaceDetector", "_fill"),
         ("crops", "stream.infer.stage", "", "crop_faces"),
         ("tracking", "stream.infer.stage", "", "track_batch"))


def measure(tree: Path, batch: int, frames: int, repeats: int, parts: bool = False) -> dict[str, Any]:
    sys.path.insert(0, str(tree))
    import cv2

    import stream.config as config_module
    from stream.pipeline import load_models
    from stream.records import Frame
    from stream.track import IouTracker

    stage = __import__("stream.infer.stage", fromlist=["infer_batch"])
    sample = getattr(config_module, "SAMPLE_CLIP", tree / "stream" / "assets" / "carphone_640x480.mp4")
    config = config_module.Config().with_overrides({"runtime.providers": ["cpu"]})
    models = load_models(config)
    clock = _Clock()
    detector = models.detector
    for net in getattr(detector, "nets", None) or [detector]:
        net.session.run = clock.wrap("ort", net.session.run)
    models.classifier.session.run = clock.wrap("ort", models.classifier.session.run)
    for name in ("stream.infer.detect", "stream.infer.classify", "stream.infer.stage", "stream.track"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "cv2"):
            module.cv2 = _TimedCv2(cv2, clock)

    if parts:  # (a part's OpenCV calls count in it too; none of them calls ONNX Runtime)
        for what, module_name, owner, name in PARTS:
            module = sys.modules.get(module_name)
            target = getattr(module, owner, None) if owner else module
            if target is not None and hasattr(target, name):
                setattr(target, name, clock.wrap(what, getattr(target, name)))

    # The frames as the capture threads hand them over: newer commits scale each for the detector
    # right after decoding it (timed: it moved there from the inference stage), older ones do not.
    prescale = getattr(detector, "prescale", None)
    made = []
    prescale_s = 0.0
    while len(made) < frames:
        cap = cv2.VideoCapture(str(sample))
        while len(made) < frames:
            ok, image = cap.read()
            if not ok:
                break
            t0 = time.thread_time()
            kwargs = {"prescaled": prescale(image, False)} if prescale is not None else {}
            prescale_s += time.thread_time() - t0
            i = len(made)
            made.append(Frame("clip", i // batch, i / 30, time.perf_counter(), image, source_id=i % batch, **kwargs))
        cap.release()
    tracking = config.tracking

    def run_all() -> dict[str, float]:
        trackers = [IouTracker(tracking.iou_threshold, tracking.max_missed_frames, tracking.smoothing_alpha)
                    for _ in range(batch)]
        clock.spent = {"ort": 0.0, "opencv": 0.0} | {what: 0.0 for what, *_ in PARTS if parts}
        t0 = time.thread_time()
        for start in range(0, len(made) - batch + 1, batch):
            stage.infer_batch(made[start:start + batch], models.detector, models.classifier,
                              lambda source_id: trackers[source_id])
        total = time.thread_time() - t0
        n = len(made) // batch * batch
        outside = (total - clock.spent["ort"]) * 1000 / n
        opencv = clock.spent["opencv"] * 1000 / n
        steps = {what: spent * 1000 / n for what, spent in clock.spent.items() if what not in ("ort", "opencv")}
        return {"outside_ort": outside, "opencv": opencv, "python": outside - opencv,
                "total": total * 1000 / n} | steps

    run_all()  # warm-up
    runs = [run_all() for _ in range(repeats)]
    prescale_ms = prescale_s * 1000 / len(made)
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    return medians | {"prescale": prescale_ms, "outside_ort_with_prescale": medians["outside_ort"] + prescale_ms,
                      "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="frames per batch, one source each (default 8)")
    parser.add_argument("--frames", type=int, default=240, help="frames per run (default 240)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs; medians are printed (default 7)")
    parser.add_argument("--tree", type=Path, default=REPO, help="the checkout to measure (default: this one)")
    parser.add_argument("--parts", action="store_true", help="also time the stage's steps in place (see above)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    tree = args.tree.resolve()
    load0 = os.getloadavg()[0]
    result = measure(tree, args.batch, args.frames, args.repeats, args.parts)
    print(f"{tree}: batch {args.batch}, {args.frames} frames x {args.repeats}, load {load0:.1f} -> "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; CPU ms per frame (medians): "
          f"outside ORT {result['outside_ort']:.3f} = OpenCV {result['opencv']:.3f} + Python {result['python']:.3f}; "
          f"with ORT {result['total']:.3f}; on the capture threads: prescale {result['prescale']:.3f} "
          f"(outside ORT with it: {result['outside_ort_with_prescale']:.3f})")
    if args.parts:
        steps = {what: result[what] for what, *_ in PARTS if what in result}
        print("  in place: " + ", ".join(f"{what} {ms:.3f}" for what, ms in steps.items())
              + f", the rest {result['outside_ort'] - sum(steps.values()):.3f}")
    if args.json:
        args.json.write_text(json.dumps({"tree": str(tree), "batch": args.batch, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
