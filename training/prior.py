"""Prior correction: a per-class logit bias fitted on validation parts, stored in the model's contract.

A classifier trained on FERPlus learned FERPlus's class prior: its crowd labels put
ambiguous faces in ``neutral``, so the model calls ``neutral`` whenever an expression
is not extreme. Logit adjustment (Menon et al., "Long-tail learning via logit
adjustment", ICLR 2021; the classic prior-shift correction of Saerens et al. 2002)
adds one number per class to the logits: ``softmax(logits / T + b)``. The network is
untouched, the cost is nothing, and the stream applies ``b`` from the contract
(:attr:`stream.contract.ModelContract.logit_bias`).

``b`` is fitted only on validation parts (:data:`training.scorecard.FIT_PARTS`:
FERPlus valid as crops, taiwanese train and lfw_expressions train end to end through
the stream), never on FERPlus test, sfew or london_faces. The objective is the mean,
over the parts, of each part's **macro recall** (the mean of its per-class recalls,
so a part's rare classes count as much as its common ones, and each part counts the
same however many faces it has). Faces the detector misses are left out of the fit
(no bias can change them). ``max_drop`` optionally keeps the FERPlus valid accuracy
within that many points of the unbiased model's.

The objective is piecewise constant in ``b``, so it is maximised by coordinate search:
each class's bias in turn is set to the best value on a grid (``b[neutral]`` stays 0:
adding a constant to every class changes nothing), sweeps repeated until none moves.

    .venv/bin/python -m training.prior stream/models/emotion_ferplus_resnet.onnx \\
        --out stream/models/emotion_ferplus_resnet_balanced.onnx --report runs/prior.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FitPart", "collect_fit_parts", "fit_logit_bias", "macro_recall", "main"]

GRID = np.round(np.arange(-4.0, 4.0001, 0.05), 4)


@dataclass(frozen=True)
class FitPart:
    """One validation part: log-probabilities (the model's current output) and true labels."""

    name: str
    log_probs: np.ndarray
    true_index: np.ndarray

    @property
    def classes(self) -> np.ndarray:
        """The label indices present."""
        return np.unique(self.true_index)


def macro_recall(log_probs: np.ndarray, true_index: np.ndarray, bias: np.ndarray) -> float:
    """Mean per-class recall of ``argmax(log_probs + bias)`` over the classes present."""
    predicted = np.argmax(log_probs + bias, axis=1)
    classes = np.unique(true_index)
    return float(np.mean([np.mean(predicted[true_index == c] == c) for c in classes]))


def _accuracy(part: FitPart, bias: np.ndarray) -> float:
    return float(np.mean(np.argmax(part.log_probs + bias, axis=1) == part.true_index))


def fit_logit_bias(parts: Sequence[FitPart], n_labels: int, *, fixed: int, max_drop: float | None = None,
                   anchor: str | None = None, grid: np.ndarray = GRID, sweeps: int = 12) -> np.ndarray:
    """The bias maximising the mean macro recall of ``parts`` (see the module docstring).

    Args:
        parts: The validation parts.
        n_labels: Number of classes.
        fixed: The class whose bias stays 0.
        max_drop: With ``anchor``: the anchor part's accuracy may fall at most this much
            (a share, 0.005 = half a point) below its accuracy without a bias.
        anchor: Name of the part ``max_drop`` guards.
        grid: Candidate values of each bias.
        sweeps: Most passes over the classes.
    """
    bias = np.zeros(n_labels)
    guard = next((p for p in parts if p.name == anchor), None) if max_drop is not None else None
    floor = _accuracy(guard, bias) - max_drop if guard is not None and max_drop is not None else None

    def objective(b: np.ndarray) -> float:
        if guard is not None and floor is not None and _accuracy(guard, b) < floor - 1e-12:
            return -1.0
        return float(np.mean([macro_recall(p.log_probs, p.true_index, b) for p in parts]))

    best = objective(bias)
    for _ in range(sweeps):
        moved = False
        for c in range(n_labels):
            if c == fixed:
                continue
            trial = bias.copy()
            scores = []
            for value in grid:
                trial[c] = value
                scores.append(objective(trial))
            scores_arr = np.array(scores)
            top = scores_arr.max()
            if top > best + 1e-9:
                # Of the values reaching the top, the one nearest 0 (the smallest change).
                ties = grid[scores_arr >= top - 1e-12]
                bias[c] = float(ties[np.argmin(np.abs(ties))])
                best = top
                moved = True
        if not moved:
            break
    return bias


def collect_fit_parts(model: Path, root: Path) -> tuple[list[FitPart], tuple[str, ...], dict[str, Any]]:
    """The model's log-probabilities on :data:`training.scorecard.FIT_PARTS` (those present under ``root``).

    Returns:
        ``(parts, model labels, notes)``; notes give each part's size and faces missed.
    """
    from training.data import load_ferplus_dir
    from training.evaluate import load_predictor, predict_split
    from training.scorecard import FIT_PARTS, load_stream_models, predictions

    parts: list[FitPart] = []
    notes: dict[str, Any] = {}
    models = None
    labels: tuple[str, ...] = ()
    for name, folder, split in FIT_PARTS:
        if not (root / folder).is_dir():
            notes[name] = "absent"
            continue
        if folder == "ferplus":
            predictor = load_predictor(model)
            labels = tuple(predictor.contract.labels)
            data = load_ferplus_dir(root / folder, label_mode="majority", splits=(split,)).converted(
                predictor.contract.input_size_wh, predictor.contract.color)
            probs, true = predict_split(predictor, data, split)
            found = np.ones(len(true), bool)
        else:
            models = models or load_stream_models(model)
            probs, found, true, labels = predictions(model, root / folder, split, models=models)
        log_p = np.log(np.maximum(probs[found].astype(np.float64), 1e-30))
        parts.append(FitPart(name, log_p, true[found]))
        notes[name] = {"faces": len(true), "found": int(found.sum())}
    return parts, labels, notes


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Fit a per-class logit bias on the validation parts and write "
                                            "the model with it in its contract.")
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared" / "datasets",
                   help="folder holding ferplus/, taiwanese/, lfw_expressions/")
    p.add_argument("--out", type=Path, metavar="OUT.onnx", help="write the model with the bias here")
    p.add_argument("--max-ferplus-drop", type=float, metavar="POINTS",
                   help="keep FERPlus valid accuracy within this many points of the unbiased model's")
    p.add_argument("--report", type=Path, metavar="REPORT.json")
    args = p.parse_args(argv)
    from training.calibrate import write_logit_bias
    from training.evaluate import load_predictor

    contract = load_predictor(args.model).contract
    parts, labels, notes = collect_fit_parts(args.model, args.root)
    if not parts:
        print(f"prior: no validation parts under '{args.root}'", file=sys.stderr)
        return 2
    fixed = labels.index("neutral") if "neutral" in labels else 0
    max_drop = None if args.max_ferplus_drop is None else args.max_ferplus_drop / 100
    bias = fit_logit_bias(parts, len(labels), fixed=fixed, max_drop=max_drop, anchor="FERPlus valid")
    zero = np.zeros(len(labels))
    report: dict[str, Any] = {"model": str(args.model), "labels": list(labels), "parts": notes,
                              "max_ferplus_drop_points": args.max_ferplus_drop,
                              "fitted_bias": [round(float(b), 4) for b in bias], "before": {}, "after": {}}
    for part in parts:
        for key, b in (("before", zero), ("after", bias)):
            report[key][part.name] = {"macro_recall": macro_recall(part.log_probs, part.true_index, b),
                                      "accuracy": _accuracy(part, b)}
    old = np.zeros(len(labels)) if contract.logit_bias is None else np.asarray(contract.logit_bias)
    total = old + bias
    report["logit_bias"] = [round(float(b), 4) for b in total]
    print("bias: " + ", ".join(f"{label} {b:+.2f}" for label, b in zip(labels, total, strict=True)))
    for part in parts:
        b, a = report["before"][part.name], report["after"][part.name]
        print(f"  {part.name}: macro recall {100 * b['macro_recall']:.1f} -> {100 * a['macro_recall']:.1f} %, "
              f"accuracy {100 * b['accuracy']:.1f} -> {100 * a['accuracy']:.1f} %")
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1) + "\n")
    if args.out is not None:
        write_logit_bias(args.model, args.out, [round(float(b), 4) for b in total])
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
