"""The one rule that names a face: its top class, ``uncertain`` when the model is not sure, or
``too_small`` when the face is too small to classify.

The video overlay, the event log and the run summary all name faces through
:func:`face_label`, so they always agree. ``classifier.uncertain_below`` in the
config sets the threshold; 0 (the default) turns the rule off. A face shorter than
``classifier.min_face_px`` is marked :attr:`stream.records.Face.too_small` by the
inference stage (its probabilities are still computed and logged).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["TOO_SMALL", "UNCERTAIN", "face_label"]

#: The label of a face whose top probability is below ``classifier.uncertain_below``.
UNCERTAIN = "uncertain"
#: The label of a face shorter than ``classifier.min_face_px``: too few pixels to read an emotion.
TOO_SMALL = "too_small"


def face_label(probs: np.ndarray, labels: Sequence[str], uncertain_below: float = 0.0, *,
               too_small: bool = False) -> str:
    """The label shown and logged for one face.

    Args:
        probs: The face's class probabilities, in ``labels`` order.
        labels: The classifier's labels.
        uncertain_below: A top probability below this gives :data:`UNCERTAIN` (0: never).
        too_small: The face is too small to classify (:attr:`stream.records.Face.too_small`).

    Returns:
        The top class, ``"uncertain"`` or ``"too_small"``.
    """
    if too_small:
        return TOO_SMALL
    top = int(np.argmax(probs))
    return UNCERTAIN if float(probs[top]) < uncertain_below else labels[top]
