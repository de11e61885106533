"""Choosing a source from the SOURCE argument."""

from __future__ import annotations

from pathlib import Path

from stream.capture.live import LiveSource, is_stream_url
from stream.capture.sources import FileSource, FrameSource, ImageSource, is_image_file
from stream.config import CaptureConfig

__all__ = ["open_source"]


def open_source(spec: str, config: CaptureConfig) -> FrameSource:
    """Make and open the source that ``spec`` names.

    Digits are a webcam index, ``scheme://...`` a network stream (both :class:`LiveSource`);
    anything else a file: a still image when OpenCV reads it as one, else a video.

    Args:
        spec: A video or image path, a webcam index (``"0"``) or a stream URL.
        config: Capture settings (timeouts, reconnection, transport).

    Raises:
        SourceError: The source cannot be opened (the message hides any password).
    """
    source: FrameSource
    if spec.isdigit():
        source = LiveSource(int(spec), config)
    elif is_stream_url(spec):
        source = LiveSource(spec, config)
    else:
        path = Path(spec)
        source = ImageSource(path) if is_image_file(path) else FileSource(path)
    source.open()
    return source
