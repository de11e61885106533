"""The live window: shows annotated frames, quits on q or Esc, degrades to headless."""

from __future__ import annotations

import logging
import os
import sys

import cv2
import numpy as np

__all__ = ["Window", "display_available"]

log = logging.getLogger(__name__)

_QUIT_KEYS = {ord("q"), ord("Q"), 27}


def display_available() -> bool:
    """True when a window could be shown (a display server on Linux; always elsewhere)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class Window:
    """An OpenCV window; if none can be opened it says so once and does nothing after.

    Args:
        title: Window title (must already be free of credentials).
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.enabled = True
        self._opened = False

    def show(self, image_bgr: np.ndarray) -> bool:
        """Show a frame. Returns True when the user asked to quit (q or Esc)."""
        if not self.enabled:
            return False
        try:
            if not self._opened:
                if not display_available():
                    raise cv2.error("no display (DISPLAY is not set)")
                cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
                self._opened = True
            cv2.imshow(self.title, image_bgr)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as err:
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else "unknown error"
            log.warning("no window can be shown (%s); carrying on without display", reason[:120])
            self.enabled = False
            return False
        return key in _QUIT_KEYS

    def close(self) -> None:
        if self._opened:
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass
            self._opened = False
