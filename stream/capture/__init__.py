"""Capture stage: sources and the thread that reads them."""

from stream.capture.open import open_source
from stream.capture.sources import FileSource, FrameSource, ImageSource, is_image_file, to_bgr
from stream.capture.thread import CaptureThread, put_until_stopped

__all__ = [
    "CaptureThread",
    "FileSource",
    "FrameSource",
    "ImageSource",
    "is_image_file",
    "open_source",
    "put_until_stopped",
    "to_bgr",
]
