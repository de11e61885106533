"""emostream: real-time facial-emotion recognition on videos, images, webcams and streams.

The pipeline (see :mod:`stream.pipeline`)::

    capture thread -> batched face detection + emotion inference -> render / record
"""

from stream.config import Config, load_config
from stream.contract import CONTRACT_KEY, ModelContract
from stream.errors import ConfigError, DataError, ModelError, OutputError, SourceError, StreamError
from stream.pipeline import Models, Pipeline, RunOptions, RunSummary, SourceSpec, load_models, run
from stream.records import Face, Frame, FrameResult

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
    "run",
]
__version__ = "0.1.0"
