"""A video file played as a live camera: frames arrive at the file's frame rate, looped.

For load tests and demos of live behaviour without cameras: the capture thread
treats it as live (newest frames kept, older ones dropped and counted), and the
decoding cost is real. Media time keeps growing across loops.
"""

from __future__ import annotations

import time

import numpy as np

from stream.capture.sources import FileSource

__all__ = ["PacedFileSource"]


class PacedFileSource:
    """Wraps a :class:`FileSource`: each frame is released at its due time, and the file loops.

    Args:
        source: The (unopened) file source.
        loop: Start again at the end (False: end like the file does).
    """

    live = True

    def __init__(self, source: FileSource, loop: bool = True) -> None:
        self.file = source
        self.loop = loop
        self.name = source.name
        self.fps = source.fps
        self.size_wh = source.size_wh
        self.frame_count: int | None = None
        self.warning = ""
        self._t0 = 0.0
        self._offset_s = 0.0
        self._last_t = 0.0
        self._stopped = False

    def open(self) -> None:
        self.file.open()
        self.fps, self.size_wh = self.file.fps, self.file.size_wh
        self._t0 = time.perf_counter()

    def read(self) -> tuple[np.ndarray, float] | None:
        item = self.file.read()
        if item is None and self.loop and not self._stopped:
            self.file.close()
            self._offset_s = self._last_t + 1.0 / self.fps
            self.file = FileSource(self.file.path, self.file.max_pixels)
            self.file.open()
            item = self.file.read()
        if item is None:
            self.warning = self.file.warning
            return None
        image, t = item
        t_media = self._offset_s + t
        self._last_t = t_media
        wait = self._t0 + t_media - time.perf_counter()
        if wait > 0:
            time.sleep(wait)  # a camera delivers this frame only now
        return image, t_media

    def interrupt(self) -> None:
        self._stopped = True

    def close(self) -> None:
        self.file.close()
