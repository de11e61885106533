"""Render/record stage: drawing, writers and the live window."""

from stream.render.display import Window, display_available, mosaic
from stream.render.draw import annotate
from stream.render.record import EventLog, ImageWriter, VideoRecorder, check_writable, event_record

__all__ = [
    "EventLog",
    "ImageWriter",
    "VideoRecorder",
    "Window",
    "annotate",
    "check_writable",
    "display_available",
    "event_record",
    "mosaic",
]
