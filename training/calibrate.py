"""Temperature scaling: probabilities whose confidence matches how often they are right.

A classifier trained with cross-entropy is usually over-confident on faces it
has not seen. Temperature scaling (Guo et al., "On Calibration of Modern
Neural Networks", ICML 2017) divides the logits by one number T fitted on
the validation split by minimising the negative log-likelihood; the top
class, and so the accuracy, never changes. T goes into the model's contract
(:attr:`stream.contract.ModelContract.temperature`), where the stream and
:mod:`training.evaluate` apply it.

The expected calibration error (ECE) is measured as Guo et al. do: the faces
are put in 15 equal-width bins of top-class confidence, and ECE is the
face-weighted mean of ``|accuracy - mean confidence|`` over the bins.

Everything here works on the *current* probabilities of a model (its
contract's temperature already applied): the fitted factor multiplies the
temperature the model already carries, since
``softmax(log(softmax(z / T0)) / t) = softmax(z / (T0 * t))``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream.contract import CONTRACT_KEY, ModelContract, calibrated
from stream.errors import DataError, ModelError
from training.export import save_onnx

__all__ = [
    "ECE_BINS",
    "CalibrationReport",
    "calibrate_predictor",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "write_temperature",
]

log = logging.getLogger(__name__)

#: Confidence bins of the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15
_T_RANGE = (0.05, 20.0)


def expected_calibration_error(probabilities: np.ndarray, true_index: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of top-class confidence.

    Args:
        probabilities: ``(N, K)`` rows summing to 1.
        true_index: ``(N,)`` true label indices.
        n_bins: Number of bins on ``(0, 1]``.

    Returns:
        ECE in ``[0, 1]`` (0 for no faces).
    """
    probabilities = np.asarray(probabilities, np.float64)
    if len(probabilities) == 0:
        return 0.0
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(true_index)
    # Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 joins the first bin.
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct.astype(np.float64), n_bins)
                 - np.bincount(bins, confidence, n_bins))
    return float(gap.sum() / count.sum())


def negative_log_likelihood(probabilities: np.ndarray, true_index: np.ndarray) -> float:
    """Mean ``-log p(true label)``, with probabilities floored at 1e-12."""
    p = np.asarray(probabilities, np.float64)[np.arange(len(true_index)), np.asarray(true_index)]
    return float(-np.mean(np.log(np.maximum(p, 1e-12)))) if len(p) else 0.0


def _log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probabilities, np.float64), 1e-30))


def _nll_at(log_p: np.ndarray, true_index: np.ndarray, t: float) -> float:
    z = log_p / t
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), true_index]))


def fit_temperature(probabilities: np.ndarray, true_index: np.ndarray) -> float:
    """The temperature t minimising the NLL of ``softmax(log(probabilities) / t)``.

    Args:
        probabilities: ``(N, K)`` current probabilities (or any softmax output).
        true_index: ``(N,)`` true label indices.

    Returns:
        t in ``[0.05, 20]`` (1 means the probabilities are already calibrated).

    Raises:
        DataError: No rows, or shapes that do not match.
    """
    from scipy.optimize import minimize_scalar

    true_index = np.asarray(true_index, np.int64)
    if len(probabilities) == 0 or len(probabilities) != len(true_index):
        raise DataError(f"temperature fit needs matching, non-empty probabilities and labels, got "
                        f"{len(probabilities)} and {len(true_index)}")
    log_p = _log_probabilities(probabilities)
    # The NLL is convex in 1/t; a bounded search over log t finds its minimum.
    result = minimize_scalar(lambda u: _nll_at(log_p, true_index, float(np.exp(u))),
                             bounds=tuple(np.log(_T_RANGE)), method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


@dataclass(frozen=True)
class CalibrationReport:
    """What temperature scaling did.

    Attributes:
        temperature: The model's new temperature (the old one times the fitted factor).
        previous_temperature: The temperature the model carried before.
        fit_split: Split the temperature was fitted on (``val``).
        fit_n: Faces in the fit split.
        nll_before: Fit split NLL before.
        nll_after: Fit split NLL after.
        eval_split: Split the ECE is reported on (``test``).
        eval_n: Faces in the evaluation split.
        ece_before: ECE on the evaluation split with the previous temperature.
        ece_after: ECE on the evaluation split with the new temperature.
        accuracy: Top-1 accuracy on the evaluation split (the same before and after).
        bins: ECE bins.
    """

    temperature: float
    previous_temperature: float
    fit_split: str
    fit_n: int
    nll_before: float
    nll_after: float
    eval_split: str
    eval_n: int
    ece_before: float
    ece_after: float
    accuracy: float
    bins: int = ECE_BINS
    model: str = ""
    dataset: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    def lines(self) -> list[str]:
        """Human-readable summary."""
        return [
            f"temperature {self.temperature:.4f} (was {self.previous_temperature:g}), fitted on "
            f"{self.fit_split} ({self.fit_n} faces): NLL {self.nll_before:.4f} -> {self.nll_after:.4f}",
            f"{self.eval_split} ({self.eval_n} faces): ECE ({self.bins} bins) {100 * self.ece_before:.2f}% -> "
            f"{100 * self.ece_after:.2f}%; accuracy {100 * self.accuracy:.2f}% (unchanged by T)",
        ]


def calibrate_predictor(predictor: Any, dataset: Any, *, fit_split: str = "val",
                        eval_split: str = "test") -> CalibrationReport:
    """Fit a temperature on ``fit_split`` and measure ECE on ``eval_split``.

    Args:
        predictor: A :class:`training.evaluate.Predictor` (its contract's temperature applied).
        dataset: A :class:`training.data.Dataset` holding both splits.
        fit_split: Split the temperature is fitted on.
        eval_split: Split the ECE is reported on.

    Raises:
        DataError: A split is empty or the labels do not match the model's.
    """
    from training.evaluate import predict_split

    fit_p, fit_true = predict_split(predictor, dataset, fit_split)
    factor = fit_temperature(fit_p, fit_true)
    eval_p, eval_true = predict_split(predictor, dataset, eval_split)
    previous = float(predictor.contract.temperature)
    return CalibrationReport(
        temperature=previous * factor,
        previous_temperature=previous,
        fit_split=fit_split,
        fit_n=len(fit_true),
        nll_before=negative_log_likelihood(fit_p, fit_true),
        nll_after=negative_log_likelihood(calibrated(fit_p, temperature=factor), fit_true),
        eval_split=eval_split,
        eval_n=len(eval_true),
        ece_before=expected_calibration_error(eval_p, eval_true),
        ece_after=expected_calibration_error(calibrated(eval_p, temperature=factor), eval_true),
        accuracy=float(np.mean(eval_p.argmax(axis=1) == eval_true)),
        model=predictor.name,
        dataset=dataset.source,
    )


def write_temperature(onnx_path: Path, out_path: Path, temperature: float) -> ModelContract:
    """Copy an ONNX classifier with ``temperature`` set in its contract metadata (weights untouched).

    Returns:
        The new contract.

    Raises:
        ModelError: The model has no valid contract, the temperature is invalid, or
            ``out_path`` cannot be written.
    """
    import onnx

    try:
        proto = onnx.load(str(onnx_path))
    except Exception as err:  # onnx raises DecodeError, OSError...
        raise ModelError(f"model '{onnx_path}' could not be read as ONNX: {err}") from err
    meta = {p.key: p.value for p in proto.metadata_props}
    if CONTRACT_KEY not in meta:
        raise ModelError(f"model '{onnx_path}': no '{CONTRACT_KEY}' metadata entry")
    contract = ModelContract.from_json(meta[CONTRACT_KEY], origin=f"model '{onnx_path}'")
    contract = dataclasses.replace(contract, temperature=float(temperature))
    contract.validate(f"model '{onnx_path}' with the new temperature")
    meta[CONTRACT_KEY] = contract.to_json()
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, meta)
    save_onnx(proto, out_path)
    return contract
