"""emostream: real-time facial-emotion recognition on videos, images, webcams and streams.

The pipeline (see :mod:`stream.pipeline`)::

    capture thread -> batched face detection + emotion inference -> render / record

The names below are imported on first use (PEP 562): ``import stream`` stays cheap,
so the command line can install its signal handlers before OpenCV and ONNX Runtime
load (a SIGTERM during start-up then ends the run with exit code 130).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream.config import Config, load_config
    from stream.contract import CONTRACT_KEY, ModelContract
    from stream.errors import ConfigError, DataError, ModelError, OutputError, SourceError, StreamError
    from stream.pipeline import Models, Pipeline, RunOptions, RunSummary, SourceSpec, load_models
    from stream.records import Face, Frame, FrameResult

_HOME = {
    "CONTRACT_KEY": "stream.contract",
    "Config": "stream.config",
    "ConfigError": "stream.errors",
    "DataError": "stream.errors",
    "Face": "stream.records",
    "Frame": "stream.records",
    "FrameResult": "stream.records",
    "ModelContract": "stream.contract",
    "ModelError": "stream.errors",
    "Models": "stream.pipeline",
    "OutputError": "stream.errors",
    "Pipeline": "stream.pipeline",
    "RunOptions": "stream.pipeline",
    "RunSummary": "stream.pipeline",
    "SourceError": "stream.errors",
    "SourceSpec": "stream.pipeline",
    "StreamError": "stream.errors",
    "load_config": "stream.config",
    "load_models": "stream.pipeline",
}

__all__ = [
    "CONTRACT_KEY",
    "Config",
    "ConfigError",
    "DataError",
    "Face",
    "Frame",
    "FrameResult",
    "ModelContract",
    "ModelError",
    "Models",
    "OutputError",
    "Pipeline",
    "RunOptions",
    "RunSummary",
    "SourceError",
    "SourceSpec",
    "StreamError",
    "load_config",
    "load_models",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once imported, a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
