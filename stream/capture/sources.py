"""Frame sources: where pixels come from.

A source is opened once, read from one thread (the capture thread) and closed
by that same thread. ``read`` returns the next image with its media time, or
``None`` at the end; a live source handles its own reconnection inside ``read``.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

import cv2
import numpy as np

from stream.capture.ffmpeg_env import FFMPEG_OPEN_LOCK
from stream.capture.imagesize import image_size_wh
from stream.config import DEFAULT_MAX_IMAGE_PIXELS, file_kind
from stream.errors import SourceError
from stream.redact import redact_url

__all__ = ["FileSource", "FrameSource", "ImageSource", "RemoteFileSource", "is_image_file", "is_remote_file",
           "to_bgr"]

log = logging.getLogger(__name__)


@runtime_checkable
class FrameSource(Protocol):
    """What the capture thread needs from a source.

    Attributes:
        name: Display name, safe to log (no credentials).
        live: True for cameras and streams: newest frame wins, frames may be dropped.
        fps: Nominal frame rate (used for the output video), > 0.
        size_wh: Frame width and height once opened.
        frame_count: Frames the container announces, or None when unknown or live.
        warning: Set when the source ended abnormally (e.g. a truncated file), else "".
    """

    name: str
    live: bool
    fps: float
    size_wh: tuple[int, int]
    frame_count: int | None
    warning: str

    def open(self) -> None:
        """Open the source. Raises SourceError when it cannot be opened."""

    def read(self) -> tuple[np.ndarray, float] | None:
        """Next BGR image and its media time in seconds, or None at the end."""

    def close(self) -> None:
        """Release the source. Idempotent."""


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Convert gray, BGRA or 16-bit images to 8-bit 3-channel BGR."""
    if image.dtype != np.uint8:
        scale = 255.0 / 65535.0 if image.dtype == np.uint16 else 255.0
        image = np.clip(image.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def is_image_file(path: Path) -> bool:
    """True when ``path`` is a still image OpenCV can read (checked by content, not name)."""
    # OpenCV crashes (SIGSEGV) on a name that is not valid UTF-8: such a name is refused by open().
    return (_is_text(path) and path.is_file() and bool(cv2.haveImageReader(str(path)))
            and not _looks_like_video(path))


def _is_text(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _looks_like_video(path: Path) -> bool:
    # haveImageReader says yes to some containers OpenCV's image codecs half-parse (GIF); a
    # video extension settles it.
    return path.suffix.lower() in {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts"}


def _check_readable(path: Path, what: str) -> None:
    if not _is_text(path):
        # OpenCV takes UTF-8 text and crashes on anything else; ascii() keeps the message printable.
        raise SourceError(f"{what} {str(path)!a} could not be opened: the name is not valid UTF-8 "
                          f"(OpenCV cannot open it; rename the file)")
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SourceError(f"{what} '{path}' could not be opened: no such file") from None
    except OSError as err:
        raise SourceError(f"{what} '{path}' could not be opened: {err.strerror or err}") from err
    if not stat.S_ISREG(mode):
        hint = " (for a webcam give its index, e.g. 0)" if stat.S_ISCHR(mode) else ""
        raise SourceError(f"{what} '{path}' could not be opened: it is {file_kind(mode)}, not a file{hint}")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{what} '{path}' could not be opened: permission denied")
    if path.stat().st_size == 0:
        raise SourceError(f"{what} '{path}' could not be opened: the file is empty")


def _check_pixels(what: str, path: Path | str, size_wh: tuple[int, int], max_pixels: int) -> None:
    if size_wh[0] * size_wh[1] > max_pixels:
        raise SourceError(f"{what} '{path}' is {size_wh[0]}x{size_wh[1]} = {size_wh[0] * size_wh[1]:,} pixels, "
                          f"more than capture.max_image_pixels ({max_pixels:,})")


class FileSource:
    """A video file, decoded by OpenCV's FFmpeg backend. Lossless: every frame is read."""

    live = False

    def __init__(self, path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.max_pixels = max_pixels
        self.fps = 30.0
        self.size_wh = (0, 0)
        self.frame_count: int | None = None
        self.warning = ""
        self._cap: cv2.VideoCapture | None = None
        self._read = 0

    def open(self) -> None:
        _check_readable(self.path, "source")
        self._open_capture(str(self.path), [])

    def _open_capture(self, target: str, params: list[int]) -> None:
        with FFMPEG_OPEN_LOCK:  # never while a camera's options are set (stream.capture.ffmpeg_env)
            cap = cv2.VideoCapture(target, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"source '{self.name}' could not be opened: not a video OpenCV can decode")
        width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width <= 0 or height <= 0:
            cap.release()
            raise SourceError(f"source '{self.name}' could not be opened: no video stream in it")
        try:
            _check_pixels("source", self.name, (width, height), self.max_pixels)
        except SourceError:
            cap.release()
            raise
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0 < fps < 1000 else 30.0
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        self.size_wh = (width, height)
        self._cap = cap

    def read(self) -> tuple[np.ndarray, float] | None:
        if self._cap is None:
            raise SourceError(f"source '{self.name}' read before open")
        ok, image = self._cap.read()
        if not ok:
            if self._read == 0:
                raise SourceError(f"source '{self.name}': no frame could be decoded (corrupt or truncated)")
            if self.frame_count is not None and self._read < self.frame_count:
                self.warning = (
                    f"source '{self.name}': decoding stopped after {self._read} of "
                    f"{self.frame_count} frames (the file looks truncated or corrupt)"
                )
            return None
        t_media_s = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if t_media_s <= 0.0 and self._read > 0:
            t_media_s = self._read / self.fps
        self._read += 1
        return image, t_media_s

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def is_remote_file(spec: str) -> bool:
    """True for an ``http(s)://`` URL of a video *file* (``.mp4``, ``.mkv`` ...), not of a live stream."""
    parts = urlsplit(spec)
    return parts.scheme.lower() in ("http", "https") and _looks_like_video(Path(parts.path))


class RemoteFileSource(FileSource):
    """A video file served over HTTP(S), read to its end like a local file: every frame, no reconnects.

    A camera's HTTP stream (MJPEG, no file name) stays a live source; a URL whose path
    names a video file (``.../clip.mp4``) is this.

    Args:
        url: The URL (a password in it never reaches a message: the name is redacted).
        open_timeout_s: Give up connecting after this long.
        read_timeout_s: Give up when the server stops sending for this long.
        max_pixels: Frame size limit (``capture.max_image_pixels``).
    """

    def __init__(self, url: str, open_timeout_s: float, read_timeout_s: float,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        super().__init__(Path(urlsplit(url).path), max_pixels)
        self.url = url
        self.path = None  # type: ignore[assignment]  # not a local file: nothing to protect from outputs
        self.name = redact_url(url)
        self._timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_s * 1000),
                          cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_s * 1000)]

    def open(self) -> None:
        self._open_capture(self.url, self._timeouts)

    def read(self) -> tuple[np.ndarray, float] | None:
        try:
            return super().read()
        except SourceError as err:
            if self._read:
                raise
            # The usual cause: the index (moov) is at the end and the server ignores HTTP Range requests.
            raise SourceError(f"{err}; over HTTP this happens when the server cannot seek (no Range "
                              f"requests) and the file's index is at its end: serve it from a server "
                              f"with Range support or remux it with -movflags +faststart") from None


class ImageSource:
    """A still image: one frame. Gray, BGRA and 16-bit images are converted to BGR."""

    live = False
    fps = 1.0
    frame_count: int | None = 1

    def __init__(self, path: Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> None:
        self.path = Path(path)
        self.name = str(path)
        self.max_pixels = max_pixels
        self.size_wh = (0, 0)
        self.warning = ""
        self._image: np.ndarray | None = None

    def open(self) -> None:
        """Read the size from the header, refuse it above ``max_pixels``, then decode.

        Raises:
            SourceError: The file is missing, unreadable, too large or not decodable.
        """
        _check_readable(self.path, "image")
        try:
            declared = image_size_wh(self.path)
        except OSError as err:
            raise SourceError(f"image '{self.path}' could not be opened: {err.strerror or err}") from err
        if declared is not None:
            _check_pixels("image", self.path, declared, self.max_pixels)
        image = cv2.imread(str(self.path), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            raise SourceError(f"image '{self.path}' could not be decoded")
        self._image = to_bgr(image)
        self.size_wh = (int(self._image.shape[1]), int(self._image.shape[0]))

    def read(self) -> tuple[np.ndarray, float] | None:
        image, self._image = self._image, None
        return None if image is None else (image, 0.0)

    def close(self) -> None:
        self._image = None
