"""The one rule that names a face: its top class, or ``uncertain`` when the model is not sure.

The video overlay, the event log and the run summary all name faces through
:func:`face_label`, so they always agree. ``classifier.uncertain_below`` in the
config sets the threshold; 0 (the default) turns the rule off.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["UNCERTAIN", "face_label"]

#: The label of a face whose top probability is below ``classifier.uncertain_below``.
UNCERTAIN = "uncertain"


def face_label(probs: np.ndarray, labels: Sequence[str], uncertain_below: float = 0.0) -> str:
    """The label shown and logged for one face.

    Args:
        probs: The face's class probabilities, in ``labels`` order.
        labels: The classifier's labels.
        uncertain_below: A top probability below this gives :data:`UNCERTAIN` (0: never).

    Returns:
        The top class, or ``"uncertain"``.
    """
    top = int(np.argmax(probs))
    return UNCERTAIN if float(probs[top]) < uncertain_below else labels[top]
