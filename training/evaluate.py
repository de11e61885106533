"""Honest evaluation of a classifier on a named split, as JSON and pictures.

A model is a Keras file (``.keras`` / ``.h5``, contract from its
``<stem>.contract.json`` or given) or an ONNX file (contract from its
metadata, run with ONNX Runtime's CPU provider). Either way the dataset's
face crops go through :func:`training.data.prepare_images` with the model's
contract, and the model runs in inference mode (Keras ``predict``: dropout
off, batch norm on its moving statistics).

Report (:class:`EvaluationReport`, ``report.json``): accuracy, macro F1,
per-class precision / recall / F1 / support, and the confusion matrix (rows:
true label, columns: predicted, in the model's label order). Soft (vote)
targets are scored against their most-voted label. FERPlus data also gets
the paper's majority-rule accuracy beside the plurality one; every report
gets the expected calibration error; test-time flip averaging on request.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from stream.contract import ModelContract, calibrated
from stream.errors import DataError, ModelError, OutputError
from training.data import Color, Dataset, convert_images, ferplus_majority_mask, prepare_images

__all__ = [
    "ClassMetrics",
    "EvaluationReport",
    "KerasPredictor",
    "OnnxPredictor",
    "Predictor",
    "evaluate_model",
    "load_predictor",
    "plot_confusion_matrix",
    "plot_history",
    "predict_split",
    "score",
    "write_report",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassMetrics:
    """Precision, recall, F1 and support of one class."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class EvaluationReport:
    """Scores of a model on one split.

    Attributes:
        split: ``train``, ``val`` or ``test``.
        labels: The model's labels; the confusion matrix uses this order.
        n_samples: Number of images scored.
        accuracy: Share of images whose top class is the true label.
        macro_f1: Unweighted mean of the per-class F1 over classes with support.
        per_class: Label -> :class:`ClassMetrics`.
        confusion_matrix: ``[true][predicted]`` counts.
        model: Path or name of the model.
        dataset: Description of the data.
    """

    split: str
    labels: tuple[str, ...]
    n_samples: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    model: str = ""
    dataset: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``report.json`` layout)."""
        data: dict[str, Any] = {
            "split": self.split,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "n_samples": self.n_samples,
            "labels": list(self.labels),
            "per_class": {k: asdict(v) for k, v in self.per_class.items()},
            "confusion_matrix": self.confusion_matrix,
            "model": self.model,
            "dataset": self.dataset,
        }
        data.update(self.extra)
        return data

    def summary(self) -> str:
        """One line for logs."""
        return (f"{self.split}: accuracy {100 * self.accuracy:.2f}%, macro F1 {self.macro_f1:.3f} "
                f"on {self.n_samples} images")


def score(
    true_index: np.ndarray, probabilities: np.ndarray, labels: tuple[str, ...], split: str, **kwargs: Any
) -> EvaluationReport:
    """Score predictions.

    Args:
        true_index: ``(N,)`` true label indices into ``labels``.
        probabilities: ``(N, len(labels))`` model outputs.
        labels: Label names.
        split: Split name for the report.
        **kwargs: ``model``, ``dataset``, ``extra`` fields of the report.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predicted = np.argmax(probabilities, axis=1)
    k = len(labels)
    indices = list(range(k))
    cm = confusion_matrix(true_index, predicted, labels=indices)
    precision, recall, f1, support = precision_recall_fscore_support(
        true_index, predicted, labels=indices, zero_division=0
    )
    present = support > 0
    per_class = {
        labels[i]: ClassMetrics(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
        for i in indices
    }
    return EvaluationReport(
        split=split,
        labels=tuple(labels),
        n_samples=len(true_index),
        accuracy=float(np.mean(predicted == true_index)) if len(true_index) else 0.0,
        macro_f1=float(np.mean(f1[present])) if present.any() else 0.0,
        per_class=per_class,
        confusion_matrix=cm.astype(int).tolist(),
        **kwargs,
    )


class Predictor(Protocol):
    """A classifier that turns uint8 face crops into class probabilities."""

    contract: ModelContract
    name: str

    def predict(self, images: np.ndarray, *, source_color: Color) -> np.ndarray:
        """Probabilities ``(N, len(contract.labels))`` for uint8 crops ``(N, H, W[, C])``."""
        ...


class KerasPredictor:
    """A Keras model run with ``predict`` (inference mode)."""

    def __init__(self, model: Any, contract: ModelContract, *, name: str = "keras model",
                 batch_size: int = 256) -> None:
        expected = (None, *contract.input_shape())
        if tuple(model.input_shape) != expected:
            raise ModelError(f"{name}: input shape {tuple(model.input_shape)} does not match its contract "
                             f"({expected}: size {list(contract.input_size_wh)}, color {contract.color})")
        self.model = model
        self.contract = contract
        self.name = name
        self.batch_size = batch_size

    def predict(self, images: np.ndarray, *, source_color: Color) -> np.ndarray:
        """See :class:`Predictor`."""
        out = []
        for start in range(0, len(images), 4096):
            x = prepare_images(images[start:start + 4096], self.contract, source_color=source_color)
            out.append(np.asarray(self.model.predict(x, batch_size=self.batch_size, verbose=0)))
        probs = np.concatenate(out) if out else np.zeros((0, len(self.contract.labels)), np.float32)
        return self.contract.probabilities(probs)


class OnnxPredictor:
    """An ONNX classifier run as the stream runs it (:class:`stream.infer.EmotionClassifier`: the
    contract's own preprocess and postprocess, mirror averaging, temperature, bias), on the CPU."""

    def __init__(self, path: Path, *, batch_size: int = 256) -> None:
        from stream.infer import EmotionClassifier

        self.classifier = EmotionClassifier.from_path(Path(path))
        self.contract = self.classifier.contract
        self.name = str(path)
        self.batch_size = batch_size

    def predict(self, images: np.ndarray, *, source_color: Color) -> np.ndarray:
        """See :class:`Predictor`."""
        crops = convert_images(images, source_color, self.contract.input_size_wh, self.contract.color)
        out = [self.classifier.classify(crops[start:start + self.batch_size])
               for start in range(0, len(crops), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.contract.labels)), np.float32)


def load_predictor(path: Path, *, contract: ModelContract | None = None) -> Predictor:
    """Open a ``.onnx``, ``.keras`` or ``.h5`` classifier.

    Args:
        path: The model file.
        contract: For Keras files: overrides the ``<stem>.contract.json`` beside the file.

    Raises:
        ModelError: Unknown file type, unreadable model, or no contract for a Keras file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model '{path}' does not exist")
    if path.suffix.lower() == ".onnx":
        return OnnxPredictor(path)
    from training.export import contract_for_keras, load_keras_model, read_sidecar_contract

    model = load_keras_model(path)
    if contract is None:
        contract = read_sidecar_contract(path) or contract_for_keras(model, origin=f"model '{path}'")
    return KerasPredictor(model, contract, name=str(path))


def predict_split(predictor: Predictor, dataset: Dataset, split: str, *, mirror: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The model's probabilities on one split, and the true labels in the model's label order.

    Args:
        predictor: From :func:`load_predictor`, or a :class:`KerasPredictor`.
        dataset: Images (any size and colour: they are converted per the contract).
        split: ``train``, ``val`` or ``test`` (aliases accepted).
        mirror: Classify the mirror images (left and right swapped) instead.

    Returns:
        ``(probabilities (N, model labels), true_index (N,))``.

    Raises:
        DataError: The split is empty, or the dataset has labels the model does not predict.
    """
    data = dataset.split(split)
    model_labels = tuple(predictor.contract.labels)
    missing = [label for label in dataset.labels if label not in model_labels]
    if missing:
        raise DataError(f"labels do not match: the dataset has {missing} which model '{predictor.name}' "
                        f"does not predict (model labels: {', '.join(model_labels)})")
    mapping = np.array([model_labels.index(label) for label in dataset.labels])
    source_color: Color = "bgr" if dataset.color == "gray" else dataset.color
    images = np.ascontiguousarray(data.images[:, :, ::-1]) if mirror else data.images
    return predictor.predict(images, source_color=source_color), mapping[data.label_index]


def evaluate_model(
    predictor: Predictor, dataset: Dataset, split: str = "test", *, log_result: bool = True,
    tta_flip: bool = False,
) -> EvaluationReport:
    """Score ``predictor`` on one split of ``dataset``.

    The dataset's labels must all be among the model's (order may differ);
    the report is in the model's label order. Its ``accuracy`` is scored on
    every kept image against its plurality label. Extra fields: ``plurality``
    (accuracy and n), ``majority_rule`` (FERPlus data only: accuracy, macro F1
    and n on the images the FERPlus paper's majority rule keeps,
    :func:`training.data.ferplus_majority_mask`), ``calibration`` (the
    contract's temperature and the expected calibration error, also at T = 1
    when the model carries another), and ``tta_flip`` (the same scores with
    each image's probabilities averaged with its mirror image's) when asked.

    Args:
        predictor: From :func:`load_predictor`, or a :class:`KerasPredictor`.
        dataset: Images (any size and colour: they are converted per the contract).
        split: ``train``, ``val`` or ``test`` (aliases accepted).
        log_result: Log the one-line summary at INFO.
        tta_flip: Also score test-time horizontal-flip averaging.

    Raises:
        DataError: The split is empty, or the label sets do not match.
    """
    from training.metrics import ECE_BINS, expected_calibration_error

    model_labels = tuple(predictor.contract.labels)
    probabilities, true_index = predict_split(predictor, dataset, split)
    votes = dataset.split(split).votes
    # The paper's rule as its reference code applies it: on the 8 emotion columns, contempt a
    # class of its own (merging contempt into neutral first keeps 29 more FER2013Test faces:
    # 3,166 instead of 3,137). A kept face's label is its plurality label either way.
    majority = ferplus_majority_mask(votes, merge_contempt=False) if votes is not None else None

    def scores(probs: np.ndarray) -> dict[str, Any]:
        predicted = probs.argmax(axis=1)
        out: dict[str, Any] = {
            "plurality": {"accuracy": float(np.mean(predicted == true_index)), "n_samples": len(true_index)},
        }
        if majority is not None:
            kept = score(true_index[majority], probs[majority], model_labels, split=_split_key(split))
            out["majority_rule"] = {
                "accuracy": kept.accuracy, "macro_f1": kept.macro_f1, "n_samples": kept.n_samples,
                "rule": "FERPlus paper: votes of 1 dropped, the top emotion holds more than half of the rest",
            }
        out["ece"] = expected_calibration_error(probs, true_index, ECE_BINS)
        return out

    main = scores(probabilities)
    temperature = float(predictor.contract.temperature)
    calibration: dict[str, Any] = {"temperature": temperature, "ece": main.pop("ece"), "ece_bins": ECE_BINS}
    if temperature != 1.0 and predictor.contract.logit_bias is None:
        raw = calibrated(probabilities, temperature=1.0 / temperature)
        calibration["ece_at_temperature_1"] = expected_calibration_error(raw, true_index, ECE_BINS)
    extra: dict[str, Any] = {**main, "calibration": calibration}
    if tta_flip:
        mirrored, _ = predict_split(predictor, dataset, split, mirror=True)
        flipped = (probabilities + mirrored) / 2.0
        tta = scores(flipped)
        extra["tta_flip"] = {
            "accuracy": tta["plurality"]["accuracy"],
            "macro_f1": score(true_index, flipped, model_labels, split=_split_key(split)).macro_f1,
            "n_samples": len(true_index),
            **({"majority_rule": tta["majority_rule"]} if "majority_rule" in tta else {}),
            "ece": tta["ece"],
        }
    report = score(true_index, probabilities, model_labels, split=_split_key(split),
                   model=predictor.name, dataset=dataset.source, extra=extra)
    if log_result:
        log.info("%s", report.summary())
    return report


def _split_key(split: str) -> str:
    from training.data import normalize_split_name

    return normalize_split_name(split)


def write_report(report: EvaluationReport | dict[str, Any], out_dir: Path, *, name: str = "report.json") -> Path:
    """Write ``report.json`` (and ``confusion_matrix.png`` for a report object) into ``out_dir``.

    Raises:
        OutputError: The folder or files cannot be written.
    """
    out_dir = Path(out_dir)
    data = report.to_dict() if isinstance(report, EvaluationReport) else report
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / name
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        raise OutputError(f"report folder '{out_dir}' could not be written: {err.strerror or err}") from err
    if isinstance(report, EvaluationReport):
        plot_confusion_matrix(report, out_dir / "confusion_matrix.png")
    return path


def _pyplot() -> Any:
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion_matrix(report: EvaluationReport, path: Path) -> Path:
    """Draw the confusion matrix: colour is the row share, text the count.

    Raises:
        OutputError: The picture cannot be written.
    """
    plt = _pyplot()
    cm = np.asarray(report.confusion_matrix, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    k = len(report.labels)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * k, 0.8 + 0.7 * k), dpi=100)
    try:
        im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(k), report.labels, rotation=45, ha="right")
        ax.set_yticks(range(k), report.labels)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
        ax.set_title(f"{report.split}: accuracy {100 * report.accuracy:.1f}%, macro F1 {report.macro_f1:.3f}")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true label")
        fig.tight_layout()
        fig.savefig(path)
    except OSError as err:
        raise OutputError(f"picture '{path}' could not be written: {err.strerror or err}") from err
    finally:
        plt.close(fig)
    return Path(path)


def plot_history(history_csv: Path, path: Path) -> Path:
    """Draw learning curves (loss, accuracy, learning rate) from a Keras ``CSVLogger`` file.

    Raises:
        OutputError: The CSV cannot be read or the picture written.
    """
    try:
        with open(history_csv, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as err:
        raise OutputError(f"history '{history_csv}' could not be read: {err.strerror or err}") from err
    plt = _pyplot()

    def column(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows])

    epochs = column("epoch") + 1 if rows else np.zeros(0)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    try:
        for ax, metric in zip(axes[:2], ("loss", "accuracy"), strict=True):
            for prefix, style in (("", "-"), ("val_", "--")):
                if rows and f"{prefix}{metric}" in rows[0]:
                    ax.plot(epochs, column(f"{prefix}{metric}"), style, marker="o", markersize=3,
                            label="validation" if prefix else "training")
            ax.set_xlabel("epoch")
            ax.set_title(metric)
            ax.grid(alpha=0.3)
            ax.legend()
        if rows and "learning_rate" in rows[0]:
            axes[2].semilogy(epochs, column("learning_rate"), marker="o", markersize=3)
        axes[2].set_xlabel("epoch")
        axes[2].set_title("learning rate")
        axes[2].grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path)
    except OSError as err:
        raise OutputError(f"picture '{path}' could not be written: {err.strerror or err}") from err
    finally:
        plt.close(fig)
    return Path(path)
