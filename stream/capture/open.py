"""Choosing a source from the SOURCE argument."""

from __future__ import annotations

from pathlib import Path

from stream.capture.sources import FileSource, FrameSource, ImageSource, is_image_file
from stream.config import CaptureConfig
from stream.errors import SourceError

__all__ = ["open_source"]


def open_source(spec: str, config: CaptureConfig) -> FrameSource:
    """Make and open the source that ``spec`` names.

    Args:
        spec: A video or image path, a webcam index (``"0"``) or a stream URL.
        config: Capture settings (timeouts, reconnection, transport).

    Raises:
        SourceError: The source cannot be opened.
    """
    if spec.isdigit() or "://" in spec:
        raise SourceError(f"source '{spec}': webcams and stream URLs are not supported yet")
    path = Path(spec)
    source: FrameSource = ImageSource(path) if is_image_file(path) else FileSource(path)
    source.open()
    return source
