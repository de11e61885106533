"""Capture stage: sources and the thread that reads them."""

from stream.capture.live import LiveSource, is_stream_url
from stream.capture.open import open_source
from stream.capture.sources import FileSource, FrameSource, ImageSource, is_image_file, to_bgr
from stream.capture.thread import CaptureThread, put_until_stopped

__all__ = [
    "CaptureThread",
    "FileSource",
    "FrameSource",
    "ImageSource",
    "LiveSource",
    "is_image_file",
    "is_stream_url",
    "open_source",
    "put_until_stopped",
    "to_bgr",
]
