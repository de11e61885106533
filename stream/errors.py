"""The exceptions emostream raises for bad input, and nothing else.

Every error a user can cause derives from :class:`StreamError`; the CLI catches
it, prints its message as one line and exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "ModelError",
    "OutputError",
    "SourceError",
    "StreamError",
]


class StreamError(Exception):
    """Base class of every error caused by the user's input."""


class ConfigError(StreamError):
    """A config file, config key or command-line value is invalid."""


class SourceError(StreamError):
    """A video source could not be opened or read."""


class ModelError(StreamError):
    """A model file is missing, corrupt or breaks its contract."""


class OutputError(StreamError):
    """An output (video, image, event log) could not be written."""


class DataError(StreamError):
    """A training or evaluation dataset is malformed."""
