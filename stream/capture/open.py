"""Choosing a source from the SOURCE argument."""

from __future__ import annotations

from pathlib import Path

from stream.capture.credentials import with_password
from stream.capture.live import LiveSource, is_stream_url
from stream.capture.paced import PacedFileSource
from stream.capture.sources import FileSource, FrameSource, ImageSource, RemoteFileSource, is_image_file, is_remote_file
from stream.config import CaptureConfig

__all__ = ["open_source"]


def open_source(spec: str, config: CaptureConfig, *, paced: bool = False, defer_live: bool = False) -> FrameSource:
    """Make and open the source that ``spec`` names.

    Digits are a webcam index, ``scheme://...`` a network stream (both :class:`LiveSource`),
    except an ``http(s)://`` URL naming a video file (:class:`RemoteFileSource`, read to its end);
    anything else a file: a still image when OpenCV reads it as one, else a video. A URL with a
    user name and no password gets its password from the environment (:mod:`stream.capture.credentials`).

    Args:
        spec: A video or image path, a webcam index (``"0"``) or a stream URL.
        config: Capture settings (timeouts, reconnection, transport).
        paced: A video file plays as a live camera at its frame rate, looped (:class:`PacedFileSource`).
        defer_live: Return a webcam or stream unopened, set to retry its first open like a
            reconnection (:class:`LiveSource` ``retry_open``): its capture thread opens it, so
            a camera that is down at start does not hold up or stop the others.

    Raises:
        SourceError: The source cannot be opened (the message hides any password).
    """
    source: FrameSource
    if spec.isdigit():
        source = LiveSource(int(spec), config, retry_open=defer_live)
    elif is_remote_file(spec):  # http(s)://.../clip.mp4: a file, read to its end
        source = RemoteFileSource(with_password(spec), config.open_timeout_s, config.read_timeout_s,
                                  config.max_image_pixels)
    elif is_stream_url(spec):
        source = LiveSource(with_password(spec), config, retry_open=defer_live)
    else:
        path = Path(spec)
        limit = config.max_image_pixels
        source = ImageSource(path, limit) if is_image_file(path) else FileSource(path, limit)
        if paced and isinstance(source, FileSource):
            source = PacedFileSource(source)
    if not (defer_live and isinstance(source, LiveSource)):
        source.open()
    return source
