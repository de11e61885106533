"""One lock for OpenCV's process-wide FFmpeg capture options.

OpenCV reads ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` when a capture opens. A live
source sets it for the moment of its open (RTSP transport, no buffering); every
other FFmpeg open takes the same lock, so a file opened at that moment (a
looping paced file beside a reconnecting camera) never inherits a camera's options.
"""

from __future__ import annotations

import threading

__all__ = ["FFMPEG_ENV", "FFMPEG_OPEN_LOCK"]

FFMPEG_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
FFMPEG_OPEN_LOCK = threading.Lock()
