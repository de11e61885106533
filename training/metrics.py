"""Calibration metrics, shared by :mod:`training.evaluate` (reports) and :mod:`training.calibrate` (fitting)."""

from __future__ import annotations

import numpy as np

__all__ = ["ECE_BINS", "expected_calibration_error", "negative_log_likelihood"]

#: Confidence bins of the expected calibration error (Guo et al. 2017 use 15).
ECE_BINS = 15


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
