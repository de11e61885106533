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

from stream.contract import ModelContract, calibrated
from stream.errors import DataError, ModelError
from training.export import save_onnx
from training.metrics import ECE_BINS, expected_calibration_error, negative_log_likelihood

__all__ = [
    "ECE_BINS",
    "CalibrationReport",
    "calibrate_predictor",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "write_contract",
    "write_logit_bias",
    "write_temperature",
]

log = logging.getLogger(__name__)

_T_RANGE = (0.05, 20.0)


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

    if predictor.contract.logit_bias is not None:
        raise ModelError(f"model '{predictor.name}' carries a logit bias: fit the temperature on the model "
                         "without it, then fit the bias (training/prior.py)")
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
    return write_contract(onnx_path, out_path, temperature=float(temperature))


def write_logit_bias(onnx_path: Path, out_path: Path, logit_bias: Any) -> ModelContract:
    """Copy an ONNX classifier with ``logit_bias`` (one number per label, or None) in its contract."""
    bias = None if logit_bias is None else tuple(float(b) for b in logit_bias)
    return write_contract(onnx_path, out_path, logit_bias=bias)


def write_contract(onnx_path: Path, out_path: Path, **changes: Any) -> ModelContract:
    """Copy an ONNX classifier with contract fields replaced (weights untouched).

    Returns:
        The new contract.

    Raises:
        ModelError: The model has no valid contract, a new value is invalid, or
            ``out_path`` cannot be written.
    """
    import onnx

    try:
        proto = onnx.load(str(onnx_path))
    except Exception as err:  # onnx raises DecodeError, OSError...
        raise ModelError(f"model '{onnx_path}' could not be read as ONNX: {err}") from err
    contract = ModelContract.from_proto(proto, origin=f"model '{onnx_path}'")
    contract = dataclasses.replace(contract, **changes)
    contract.validate(f"model '{onnx_path}' with {', '.join(sorted(changes))} changed")
    contract.write_to(proto)  # the model's other metadata entries stay
    save_onnx(proto, out_path)
    return contract
