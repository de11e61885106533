"""How BlazeFace frames a FER2013 face, measured: the crop margin the stream should use.

FER2013 faces are 48x48 crops framed by their makers' own face finder; the
stream cuts its crops around BlazeFace boxes (:func:`stream.infer.classify.crop_faces`:
a square of side ``max(box w, h) * (1 + 2 * crop_margin)`` centred on the box,
moved down by ``crop_offset_y`` box sides). To feed a model what it learned on,
the crop should cover what the 48x48 image covered. This script measures that:

1. each FERPlus test face (``FER2013Test``) is upscaled to a random side
   (default 96-160 px) and pasted at a random place on a 640x480 canvas
   (flat gray or noise, alternately);
2. the stream's own detector (:class:`stream.infer.detect.FaceDetector`, the
   config's model and thresholds) runs on the canvas;
3. for the detection on the pasted face, the FER extent is compared with the
   box: scale = FER side / box side (``max(w, h)``), centre offset = (FER
   centre - box centre) / box side;
4. median and IQR of each, the detection rate, and what they imply:
   ``crop_margin = (median scale - 1) / 2`` and ``crop_offset_y`` = median
   vertical offset;
5. optionally (``--model``), the classifier's accuracy on the detected faces
   with its contract's crop, with the measured crop, and with the exact FER
   extent (the ceiling).

    .venv/bin/python benchmarks/crop_framing.py [--ferplus-dir DIR] [--model MODEL.onnx] [--json OUT]

The FERPlus folder is not part of the repository (``../shared/datasets/ferplus``
by default); without it the script says so and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stream.config import Config, load_config  # noqa: E402
from stream.errors import StreamError  # noqa: E402
from stream.infer.classify import CropSpec, EmotionClassifier, crop_faces  # noqa: E402
from stream.infer.detect import FaceDetector  # noqa: E402

DEFAULT_FERPLUS = REPO.parent / "shared" / "datasets" / "ferplus"
CANVAS_WH = (640, 480)


@dataclasses.dataclass
class Placement:
    """One FER face on its canvas: where it went and what the detector found."""

    index: int
    side_px: int
    x0: int
    y0: int
    background: str
    box_xyxy: np.ndarray | None = None
    score: float = 0.0

    @property
    def fer_xyxy(self) -> np.ndarray:
        return np.array([self.x0, self.y0, self.x0 + self.side_px, self.y0 + self.side_px], np.float64)


def make_canvas(face_gray: np.ndarray, side_px: int, x0: int, y0: int, background: str,
                rng: np.random.Generator) -> np.ndarray:
    """A 640x480 BGR canvas with the face upscaled to ``side_px`` at ``(x0, y0)``."""
    w, h = CANVAS_WH
    if background == "gray":
        canvas = np.full((h, w), 128, np.uint8)
    else:  # smooth noise with some texture, neither flat nor a face
        small = rng.normal(128, 45, (h // 8, w // 8)).clip(0, 255).astype(np.uint8)
        canvas = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        canvas = cv2.add(canvas, rng.normal(0, 8, (h, w)).clip(-30, 30).astype(np.int8), dtype=cv2.CV_8U)
    canvas[y0:y0 + side_px, x0:x0 + side_px] = cv2.resize(face_gray, (side_px, side_px),
                                                          interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)


def _match(detections: list[Any], fer: np.ndarray) -> tuple[np.ndarray | None, float]:
    """The detection whose centre lies inside the pasted face (best score), or none."""
    for det in detections:  # best first
        cx, cy = (det.box_xyxy[0] + det.box_xyxy[2]) / 2, (det.box_xyxy[1] + det.box_xyxy[3]) / 2
        if fer[0] <= cx <= fer[2] and fer[1] <= cy <= fer[3]:
            return np.asarray(det.box_xyxy, np.float64), float(det.score)
    return None, 0.0


def _stats(values: np.ndarray) -> dict[str, float]:
    q1, med, q3 = np.percentile(values, [25, 50, 75]) if len(values) else (np.nan,) * 3
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1)}


def _canvas_rng(seed: int, index: int) -> np.random.Generator:
    # One stream per face, so the same canvas can be made again for the accuracy check.
    return np.random.default_rng([seed, index])


def measure(faces: np.ndarray, detector: FaceDetector, *, sizes: tuple[int, int], seed: int,
            batch: int = 16) -> tuple[list[Placement], dict[str, Any]]:
    """Place every face, detect, and fit the box -> FER extent relation."""
    rng = np.random.default_rng(seed)
    w, h = CANVAS_WH
    placements: list[Placement] = []
    for start in range(0, len(faces), batch):
        canvases, chunk = [], []
        for i in range(start, min(start + batch, len(faces))):
            side = int(rng.integers(sizes[0], sizes[1] + 1))
            p = Placement(i, side, int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1)),
                          "gray" if i % 2 == 0 else "noise")
            canvases.append(make_canvas(faces[i], side, p.x0, p.y0, p.background, _canvas_rng(seed, i)))
            chunk.append(p)
        for p, dets in zip(chunk, detector.detect(canvases), strict=True):
            p.box_xyxy, p.score = _match(dets, p.fer_xyxy)
        placements.extend(chunk)
    found = [p for p in placements if p.box_xyxy is not None]
    boxes = np.array([p.box_xyxy for p in found]).reshape(-1, 4)
    fer = np.array([p.fer_xyxy for p in found]).reshape(-1, 4)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    box_side = np.maximum(bw, bh)
    fer_side = fer[:, 2] - fer[:, 0]
    scale = fer_side / box_side
    dx = ((fer[:, 0] + fer[:, 2]) - (boxes[:, 0] + boxes[:, 2])) / 2 / box_side
    dy = ((fer[:, 1] + fer[:, 3]) - (boxes[:, 1] + boxes[:, 3])) / 2 / box_side
    by_size = {}
    edges = np.linspace(sizes[0], sizes[1] + 1, 4).round().astype(int)
    for lo, hi in itertools.pairwise(edges.tolist()):
        sel = [p for p in placements if lo <= p.side_px < hi]
        hit = [p for p in sel if p.box_xyxy is not None]
        sel_scale = np.array([p.side_px / max(np.ptp(p.box_xyxy[[0, 2]]), np.ptp(p.box_xyxy[[1, 3]]))
                              for p in hit])
        by_size[f"{lo}-{hi - 1}"] = {"n": len(sel), "detection_rate": len(hit) / max(1, len(sel)),
                                     "scale_median": float(np.median(sel_scale)) if len(hit) else float("nan")}
    by_background = {bg: sum(p.box_xyxy is not None for p in placements if p.background == bg)
                     / max(1, sum(p.background == bg for p in placements)) for bg in ("gray", "noise")}
    fit = {
        "n_faces": len(placements),
        "n_detected": len(found),
        "detection_rate": len(found) / max(1, len(placements)),
        "detection_rate_by_background": by_background,
        "detection_rate_by_side_px": by_size,
        "scale": _stats(scale),
        "offset_x": _stats(dx),
        "offset_y": _stats(dy),
        "box_aspect_w_over_h": _stats(bw / bh),
        "score": _stats(np.array([p.score for p in found])),
    }
    med_scale = fit["scale"]["median"]
    fit["crop_margin"] = (med_scale - 1.0) / 2.0
    # In box sides, as crop_faces applies it (before the margin grows the square).
    fit["crop_offset_y"] = fit["offset_y"]["median"]
    return placements, fit


def accuracy_on_detected(faces: np.ndarray, labels_index: np.ndarray, majority: np.ndarray | None,
                         placements: list[Placement], classifier: EmotionClassifier, fit: dict[str, Any],
                         seed: int) -> dict[str, Any]:
    """The classifier's accuracy on the detected faces under three crops."""
    contract = classifier.contract
    found = [p for p in placements if p.box_xyxy is not None]
    offset_y = float(fit["crop_offset_y"])
    crops: dict[str, list[np.ndarray]] = {"contract": [], "measured": [], "measured_no_offset": [],
                                          "fer_extent": []}
    margin = round(float(fit["crop_margin"]), 3)
    spec_measured = CropSpec(contract.input_size_wh, contract.color, margin, round(offset_y, 3))
    spec_no_offset = CropSpec(contract.input_size_wh, contract.color, margin)
    spec_fer = CropSpec(contract.input_size_wh, contract.color, 0.0)
    for p in found:
        canvas = make_canvas(faces[p.index], p.side_px, p.x0, p.y0, p.background, _canvas_rng(seed, p.index))
        box = p.box_xyxy
        crops["contract"].extend(crop_faces(canvas, [box], contract))
        crops["measured"].extend(crop_faces(canvas, [box], spec_measured))
        crops["measured_no_offset"].extend(crop_faces(canvas, [box], spec_no_offset))
        crops["fer_extent"].extend(crop_faces(canvas, [p.fer_xyxy], spec_fer))
    idx = np.array([p.index for p in found], np.int64)
    truth = labels_index[idx]
    out: dict[str, Any] = {"n": len(found), "crop_margin_contract": contract.crop_margin,
                           "crop_offset_y_contract": contract.crop_offset_y,
                           "crop_margin_measured": margin, "crop_offset_y": spec_measured.crop_offset_y}
    for name, images in crops.items():
        probs = np.concatenate([classifier.classify(np.stack(images[i:i + 64]))
                                for i in range(0, len(images), 64)]) if images else np.zeros((0, 1))
        hit = probs.argmax(axis=1) == truth
        row = {"accuracy": float(hit.mean()) if len(hit) else float("nan")}
        if majority is not None:
            keep = majority[idx]
            row["majority_rule_accuracy"] = float(hit[keep].mean()) if keep.any() else float("nan")
            row["majority_rule_n"] = int(keep.sum())
        out[name] = row
    return out


def markdown(fit: dict[str, Any], acc: dict[str, Any] | None, args: argparse.Namespace, seconds: float) -> str:
    """The block to paste into models/README.md."""
    def iqr(key: str, digits: int = 3) -> str:
        s = fit[key]
        return f"{s['median']:.{digits}f} (IQR {s['q1']:.{digits}f} to {s['q3']:.{digits}f})"

    lines = [
        "### Crop framing, measured (`benchmarks/crop_framing.py`)",
        "",
        f"{fit['n_faces']} FERPlus test faces (`FER2013Test`), each upscaled to a random side of "
        f"{args.sizes[0]}-{args.sizes[1]} px and pasted at a random place on a 640x480 canvas (flat gray or "
        f"smooth noise, alternately); the stream's detector (`{Path(args.detector).name}`, score >= "
        f"{args.score_threshold}) on each; seed {args.seed}; {seconds:.0f} s.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| detection rate | {100 * fit['detection_rate']:.1f} % ({fit['n_detected']} of {fit['n_faces']}); "
        f"gray {100 * fit['detection_rate_by_background']['gray']:.1f} %, noise "
        f"{100 * fit['detection_rate_by_background']['noise']:.1f} % |",
    ]
    for size, row in fit["detection_rate_by_side_px"].items():
        lines.append(f"| detection rate, side {size} px | {100 * row['detection_rate']:.1f} % (n = {row['n']}), "
                     f"scale median {row['scale_median']:.3f} |")
    lines += [
        f"| scale: FER side / box side (max(w, h)) | {iqr('scale')} |",
        f"| centre offset x (FER - box) / box side | {iqr('offset_x')} |",
        f"| centre offset y (FER - box) / box side, + = down | {iqr('offset_y')} |",
        f"| box aspect w / h | {iqr('box_aspect_w_over_h')} |",
        f"| implied `crop_margin` = (scale - 1) / 2 | **{fit['crop_margin']:.3f}** |",
        f"| implied `crop_offset_y` (box sides) | **{fit['crop_offset_y']:.3f}** |",
    ]
    if acc is not None:
        lines += [
            "",
            f"Accuracy of `{Path(args.model).name}` on the {acc['n']} detected faces (plurality labels"
            + ("; FERPlus majority rule in brackets" if "majority_rule_accuracy" in acc["contract"] else "") + "):",
            "",
            "| crop | accuracy |",
            "|---|---|",
        ]
        names = {
            "contract": f"the model's contract (margin {acc['crop_margin_contract']:g}, "
                        f"offset y {acc['crop_offset_y_contract']:g})",
            "measured_no_offset": f"measured margin {acc['crop_margin_measured']:g}, no offset",
            "measured": f"measured margin {acc['crop_margin_measured']:g}, offset y {acc['crop_offset_y']:g}",
            "fer_extent": "the exact FER extent (ceiling)",
        }
        for key, label in names.items():
            row = acc[key]
            extra = (f" ({100 * row['majority_rule_accuracy']:.2f} %, n = {row['majority_rule_n']})"
                     if "majority_rule_accuracy" in row else "")
            lines.append(f"| {label} | {100 * row['accuracy']:.2f} %{extra} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ferplus-dir", type=Path, default=DEFAULT_FERPLUS, metavar="DIR",
                        help="FERPlus folder with FER2013Test/ (default ../shared/datasets/ferplus)")
    parser.add_argument("--config", type=Path, help="config.yaml for the detector model and thresholds")
    parser.add_argument("--model", type=Path, metavar="MODEL.onnx",
                        help="also score this classifier on the detected faces under each crop")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N test faces (0: all)")
    parser.add_argument("--sizes", type=int, nargs=2, default=(96, 160), metavar=("MIN", "MAX"),
                        help="side of the pasted face in canvas pixels (default 96 160)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, metavar="OUT", help="write every number as JSON here")
    args = parser.parse_args(argv)
    try:
        if not (args.ferplus_dir / "FER2013Test" / "label.csv").is_file():
            raise StreamError(f"--ferplus-dir '{args.ferplus_dir}': no FER2013Test/label.csv there (the FERPlus "
                              "folder is not part of the repository)")
        if not (1 <= args.sizes[0] <= args.sizes[1] <= min(CANVAS_WH)):
            raise StreamError(f"--sizes: expected 1 <= MIN <= MAX <= {min(CANVAS_WH)}, got {args.sizes}")
        from training.data import ferplus_majority_mask, load_ferplus_dir

        config: Config = load_config(args.config)
        data = load_ferplus_dir(args.ferplus_dir, splits=("test",))
        test = data.split("test")
        faces = test.images[..., 0]
        if args.limit > 0:
            faces = faces[:args.limit]
        det = config.detector
        args.detector, args.score_threshold = det.model, det.score_threshold
        detector = FaceDetector.from_path(det.model, ("cpu",), 0, det.score_threshold, det.nms_iou,
                                          det.min_face_px)
        t0 = time.perf_counter()
        placements, fit = measure(faces, detector, sizes=tuple(args.sizes), seed=args.seed)
        acc = None
        if args.model is not None:
            classifier = EmotionClassifier.from_path(args.model, ("cpu",), 0)
            missing = [label for label in data.labels if label not in classifier.labels]
            if missing:
                raise StreamError(f"--model '{args.model}' does not predict {missing}")
            mapping = np.array([classifier.labels.index(label) for label in data.labels])
            truth = mapping[test.label_index]
            majority = ferplus_majority_mask(test.votes, merge_contempt=False) if test.votes is not None else None
            acc = accuracy_on_detected(faces, truth, majority, placements, classifier, fit, args.seed)
        seconds = time.perf_counter() - t0
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"fit": fit, "accuracy": acc, "sizes": list(args.sizes),
                                             "seed": args.seed}, indent=2) + "\n")
    except (StreamError, OSError) as err:
        print(f"crop_framing: {err}", file=sys.stderr)
        return 2
    print(markdown(fit, acc, args, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
