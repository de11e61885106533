"""The cross-dataset scorecard: one table per emotion model, FERPlus and the other labelled face sets.

Rows (each set is read from ``ROOT/<name>``; a set that is absent is left out and said so):

* ``FERPlus test``: FER2013Test crops (48x48, no detector), plurality labels and the
  FERPlus paper's majority rule (:func:`training.evaluate.evaluate_model`).
* ``taiwanese valid``, ``lfw_expressions valid``, ``sfew``, ``london_faces``: **end to end
  through the stream**: each image is one frame through the stream's own inference code
  (:func:`stream.infer.stage.infer_batch`: the real BlazeFace detector, the contract's crop,
  eye alignment, the classifier with its contract's temperature and logit bias), models loaded
  by :func:`stream.pipeline.load_models`. The largest face of each image is the one scored; an
  image where no face is found counts as wrong and is reported (``found``).
* ``lfw_expressions valid (crops)``: the same faces given to the classifier whole, as crops
  (these are 128 px tight crops, which the detector often misses).

Columns: faces (images), found (share with a face), accuracy, macro-F1 (over the set's classes; a
face not found is a wrong prediction), each class's recall, the share of images predicted
``neutral`` against the true share, and the classifier's milliseconds per face (batch 16, one
thread, ONNX Runtime CPU, median of 100 timed batches of random uint8 crops of the model's input size,
as ``benchmarks/classifier_speed.py`` times them).

Which parts may choose anything: FERPlus valid, taiwanese train and lfw_expressions train
(:data:`FIT_PARTS`). FERPlus test, sfew and london_faces are scored once per candidate,
never used for a choice.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream.contract import FER2013_LABELS
from stream.errors import DataError

__all__ = [
    "END_TO_END_SETS",
    "FIT_PARTS",
    "Row",
    "end_to_end",
    "format_table",
    "ms_per_face",
    "row_from_predictions",
    "scorecard",
]

NOT_FOUND = -1
#: (row name, folder, split) of the sets scored end to end.
END_TO_END_SETS: tuple[tuple[str, str, str], ...] = (
    ("taiwanese valid", "taiwanese", "val"),
    ("lfw_expressions valid", "lfw_expressions", "val"),
    ("sfew", "sfew", "val"),
    ("london_faces", "london_faces", "val"),
)
#: Validation parts a choice (a bias, a threshold, a checkpoint) may be fitted on.
FIT_PARTS: tuple[tuple[str, str, str], ...] = (
    ("FERPlus valid", "ferplus", "val"),
    ("taiwanese train", "taiwanese", "train"),
    ("lfw_expressions train", "lfw_expressions", "train"),
)


@dataclass
class Row:
    """One scorecard line."""

    name: str
    n: int
    found: float
    accuracy: float
    macro_f1: float
    recall: dict[str, float]
    neutral_predicted: float
    neutral_true: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"name": self.name, "n": self.n, "found": self.found, "accuracy": self.accuracy,
                "macro_f1": self.macro_f1, "recall": self.recall, "neutral_predicted": self.neutral_predicted,
                "neutral_true": self.neutral_true, **self.extra}


def row_from_predictions(name: str, true_index: np.ndarray, predicted: np.ndarray, labels: Sequence[str], *,
                         confidence: np.ndarray | None = None, uncertain_below: float | None = None,
                         **extra: Any) -> Row:
    """Scores of one set. ``predicted`` is ``NOT_FOUND`` (-1) where no face was found: always wrong.

    Macro-F1 is the mean F1 over the classes present in ``true_index``. With ``confidence``
    (each face's top probability) and ``uncertain_below``, the stream's ``uncertain`` option:
    ``held_back`` is the share of the found faces it labels ``uncertain``, ``accuracy_rest``
    the accuracy on the other found faces.
    """
    true_index = np.asarray(true_index)
    predicted = np.asarray(predicted)
    n = len(true_index)
    if confidence is not None and uncertain_below is not None:
        found = predicted != NOT_FOUND
        sure = found & (np.asarray(confidence) >= uncertain_below)
        extra["uncertain_below"] = uncertain_below
        extra["held_back"] = float(np.sum(found & ~sure) / max(int(found.sum()), 1))
        extra["accuracy_rest"] = float(np.mean(predicted[sure] == true_index[sure])) if sure.any() else 0.0
    present = sorted(set(true_index.tolist()))
    recall, f1s = {}, []
    for c in present:
        tp = int(np.sum((predicted == c) & (true_index == c)))
        support = int(np.sum(true_index == c))
        called = int(np.sum(predicted == c))
        r = tp / support if support else 0.0
        p = tp / called if called else 0.0
        recall[labels[c]] = r
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    neutral = list(labels).index("neutral") if "neutral" in labels else -2
    return Row(name=name, n=n, found=float(np.mean(predicted != NOT_FOUND)) if n else 0.0,
               accuracy=float(np.mean(predicted == true_index)) if n else 0.0,
               macro_f1=float(np.mean(f1s)) if f1s else 0.0, recall=recall,
               neutral_predicted=float(np.mean(predicted == neutral)) if n else 0.0,
               neutral_true=float(np.mean(true_index == neutral)) if n else 0.0, extra=dict(extra))


def load_stream_models(model: Path, *, threads: int = 0) -> Any:
    """The stream's detector and ``model`` as the classifier, loaded the stream's way (CPU)."""
    from stream.config import Config
    from stream.pipeline import load_models

    config = Config().with_overrides({"classifier.model": Path(model), "runtime.providers": ["cpu"],
                                      "runtime.intra_op_threads": threads})
    return load_models(config)


def end_to_end(models: Any, image_paths: Sequence[Path], *, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Each image as a frame through :func:`stream.infer.stage.infer_batch`; the largest face's probabilities.

    Returns:
        ``(probabilities (N, labels), found (N,) bool)``; rows without a face are zeros.
    """
    from stream.infer.stage import infer_batch
    from stream.records import Frame
    from training.datasets import read_image

    labels = models.classifier.labels
    probs = np.zeros((len(image_paths), len(labels)), np.float32)
    found = np.zeros(len(image_paths), bool)
    for start in range(0, len(image_paths), batch):
        frames = [Frame("scorecard", start + k, 0.0, time.perf_counter(), read_image(p))
                  for k, p in enumerate(image_paths[start:start + batch])]
        for k, result in enumerate(infer_batch(frames, models.detector, models.classifier, None)):
            if not result.faces:
                continue
            areas = [float((f.box_xyxy[2] - f.box_xyxy[0]) * (f.box_xyxy[3] - f.box_xyxy[1])) for f in result.faces]
            probs[start + k] = result.faces[int(np.argmax(areas))].probs
            found[start + k] = True
    return probs, found


def ms_per_face(model: Path, crops: np.ndarray, *, batch: int = 16, repeats: int = 100) -> float:
    """Median milliseconds per face of the classifier on ``crops`` (batch ``batch``, one thread)."""
    from stream.infer import EmotionClassifier

    clf = EmotionClassifier.from_path(model, ("cpu",), 1)
    if len(crops) < batch:
        crops = np.concatenate([crops] * (batch // max(len(crops), 1) + 1))
    x = crops[:batch]
    for _ in range(10):
        clf.classify(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        clf.classify(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / batch


def labelled_images(root: Path, split: str) -> tuple[list[Path], list[str], list[dict[str, str]]]:
    """Image paths, labels and rows of one split of an ``images/ + labels.csv`` set."""
    from training.datasets import read_labels_csv

    rows = [r for r in read_labels_csv(root / "labels.csv") if r["split"] == split]
    return [root / "images" / r["file"] for r in rows], [r["label"] for r in rows], rows


def _true_index(labels: Sequence[str], model_labels: Sequence[str], origin: str) -> np.ndarray:
    missing = sorted(set(labels) - set(model_labels))
    if missing:
        raise DataError(f"{origin}: labels {missing} are not among the model's ({', '.join(model_labels)})")
    return np.array([list(model_labels).index(label) for label in labels], np.int64)


def ferplus_rows(model: Path, ferplus: Path, uncertain_below: float | None = None) -> list[Row]:
    """FERPlus test, plurality and majority rule."""
    from training.data import ferplus_majority_mask, load_ferplus_dir
    from training.evaluate import load_predictor, predict_split

    predictor = load_predictor(model)
    data = load_ferplus_dir(ferplus, label_mode="majority", splits=("test",)).converted(
        predictor.contract.input_size_wh, predictor.contract.color)
    probs, true = predict_split(predictor, data, "test")
    labels = predictor.contract.labels
    predicted = probs.argmax(axis=1)
    votes = data.split("test").votes
    if votes is None:
        raise DataError(f"'{ferplus}' has no FERPlus votes for the majority rule")
    majority = ferplus_majority_mask(votes, merge_contempt=False)
    top = probs.max(axis=1)
    return [row_from_predictions("FERPlus test (plurality)", true, predicted, labels, confidence=top,
                                 uncertain_below=uncertain_below),
            row_from_predictions("FERPlus test (majority rule)", true[majority], predicted[majority], labels,
                                 confidence=top[majority], uncertain_below=uncertain_below)]


def predictions(model: Path, root: Path, split: str, *, models: Any = None, crops: bool = False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """``(probabilities, found, true_index, model labels)`` of one split, end to end or as crops."""
    paths, labels, _ = labelled_images(root, split)
    if crops:
        from training.data import convert_images
        from training.datasets import read_image
        from training.evaluate import load_predictor

        predictor = load_predictor(model)
        c = predictor.contract
        images = np.stack([convert_images(read_image(p)[None], "bgr", c.input_size_wh, c.color)[0] for p in paths])
        source_color = "bgr" if c.color == "gray" else c.color
        probs = predictor.predict(images, source_color=source_color)
        found = np.ones(len(paths), bool)
        model_labels = tuple(c.labels)
    else:
        models = models or load_stream_models(model)
        probs, found = end_to_end(models, paths)
        model_labels = tuple(models.classifier.labels)
    return probs, found, _true_index(labels, model_labels, str(root)), model_labels


def scorecard(model: Path, root: Path, *, timing_crops: np.ndarray | None = None, log: Any = None,
              uncertain_below: float | None = None) -> tuple[list[Row], list[str]]:
    """Every row for ``model`` from the sets under ``root``; and notes (sets absent).

    ``uncertain_below``: also score the stream's ``classifier.uncertain_below`` option.
    """
    rows: list[Row] = []
    notes: list[str] = []
    say = log or (lambda *_: None)
    if (root / "ferplus").is_dir():
        say("FERPlus test")
        rows.extend(ferplus_rows(model, root / "ferplus", uncertain_below))
    else:
        notes.append(f"{root / 'ferplus'} absent: no FERPlus rows")
    models = None
    for name, folder, split in END_TO_END_SETS:
        if not (root / folder).is_dir():
            notes.append(f"{root / folder} absent: no '{name}' row")
            continue
        say(name)
        models = models or load_stream_models(model)
        probs, found, true, labels = predictions(model, root / folder, split, models=models)
        predicted = np.where(found, probs.argmax(axis=1), NOT_FOUND)
        rows.append(row_from_predictions(name, true, predicted, labels, confidence=probs.max(axis=1),
                                         uncertain_below=uncertain_below))
        if folder == "lfw_expressions":
            probs, _, true, labels = predictions(model, root / folder, split, crops=True)
            rows.append(row_from_predictions(f"{name} (crops)", true, probs.argmax(axis=1), labels,
                                             confidence=probs.max(axis=1), uncertain_below=uncertain_below))
    if timing_crops is None:
        from stream.infer import EmotionClassifier

        c = EmotionClassifier.from_path(model, ("cpu",), 1).contract
        shape = (16, c.input_size_wh[1], c.input_size_wh[0]) + (() if c.color == "gray" else (3,))
        timing_crops = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    ms = ms_per_face(model, timing_crops)
    for row in rows:
        row.extra["ms_per_face"] = ms
    return rows, notes


def format_table(rows: Sequence[Row], labels: Sequence[str] = FER2013_LABELS) -> str:
    """A Markdown table of the rows."""
    uncertain = any("held_back" in r.extra for r in rows)
    head = ("| set | faces | found | accuracy | macro-F1 | predicted / true neutral | "
            + " | ".join(f"{label} recall" for label in labels) + " | ms per face |"
            + (" uncertain: held back / accuracy on the rest |" if uncertain else ""))
    lines = [head, "|" + "---|" * (7 + len(labels) + uncertain)]
    for r in rows:
        recalls = " | ".join(f"{100 * r.recall[label]:.0f}" if label in r.recall else "" for label in labels)
        ms = r.extra.get("ms_per_face")
        line = (f"| {r.name} | {r.n} | {100 * r.found:.1f} % | {100 * r.accuracy:.1f} % | {r.macro_f1:.3f} | "
                f"{100 * r.neutral_predicted:.0f} % / {100 * r.neutral_true:.0f} % | {recalls} | "
                + (f"{ms:.2f} |" if ms is not None else " |"))
        if uncertain:
            line += (f" {100 * r.extra['held_back']:.0f} % / {100 * r.extra['accuracy_rest']:.1f} % |"
                     if "held_back" in r.extra else " |")
        lines.append(line)
    return "\n".join(lines)
