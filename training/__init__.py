"""Train, evaluate and export emotion classifiers for the stream (``emostream[train]``).

The public names below load lazily: ``import training`` (and the CLI's
``training.cli.register``) does not import TensorFlow; the first use of a
name that needs it does. Modules:

* :mod:`training.data`: FER2013 / FERPlus CSVs and image folders, preprocessing.
* :mod:`training.model`: the architectures and the batch-norm fix.
* :mod:`training.trainer`: the training run (``emostream train``).
* :mod:`training.evaluate`: scores and pictures (``emostream evaluate``).
* :mod:`training.export`: Keras -> ONNX with the contract (``emostream export``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ARCHITECTURES",
    "Dataset",
    "EvaluationReport",
    "ExportReport",
    "Split",
    "TrainResult",
    "build_model",
    "contract_for_keras",
    "evaluate_model",
    "export_keras",
    "load_dataset",
    "load_fer2013",
    "load_image_folder",
    "load_predictor",
    "prepare_images",
    "read_contract",
    "recalibrate_batch_norm",
    "train",
]

_WHERE = {
    "ARCHITECTURES": "training.model",
    "Dataset": "training.data",
    "EvaluationReport": "training.evaluate",
    "ExportReport": "training.export",
    "Split": "training.data",
    "TrainResult": "training.trainer",
    "build_model": "training.model",
    "contract_for_keras": "training.export",
    "evaluate_model": "training.evaluate",
    "export_keras": "training.export",
    "load_dataset": "training.data",
    "load_fer2013": "training.data",
    "load_image_folder": "training.data",
    "load_predictor": "training.evaluate",
    "prepare_images": "training.data",
    "read_contract": "training.export",
    "recalibrate_batch_norm": "training.model",
    "train": "training.trainer",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'training' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
