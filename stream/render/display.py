"""The live window: shows annotated frames, quits on q or Esc, degrades to headless."""

from __future__ import annotations

import logging
import os
import sys

import cv2
import numpy as np

__all__ = ["Window", "display_available", "fit_size", "mosaic"]

#: The window's largest initial size when the screen's size is unknown (fits a 1080p screen with borders).
MAX_WINDOW_WH = (1600, 900)

log = logging.getLogger(__name__)

_QUIT_KEYS = {ord("q"), ord("Q"), 27}


def display_available() -> bool:
    """True when a window could be shown (a display server on Linux; always elsewhere)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def fit_size(size_wh: tuple[int, int], bound_wh: tuple[int, int] = MAX_WINDOW_WH) -> tuple[int, int]:
    """``size_wh`` scaled down (never up) to fit ``bound_wh``, aspect kept."""
    w, h = size_wh
    s = min(1.0, bound_wh[0] / max(w, 1), bound_wh[1] / max(h, 1))
    return max(1, round(w * s)), max(1, round(h * s))


def mosaic(images: list[np.ndarray | None], cell_wh: tuple[int, int] = (640, 360)) -> np.ndarray:
    """Tile several sources' latest frames in a grid (columns = ceil(sqrt(n))); a missing frame is black.

    Each frame is letterboxed into its cell, so sources of any size and aspect fit.
    """
    n = max(len(images), 1)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    cw, ch = cell_wh
    out = np.zeros((rows * ch, cols * cw, 3), np.uint8)
    for i, image in enumerate(images):
        if image is None:
            continue
        w, h = fit_size((image.shape[1], image.shape[0]), cell_wh)
        x0 = (i % cols) * cw + (cw - w) // 2
        y0 = (i // cols) * ch + (ch - h) // 2
        out[y0:y0 + h, x0:x0 + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
    return out


class Window:
    """An OpenCV window; if none can be opened it says so once and does nothing after.

    Args:
        title: Window title (must already be free of credentials).
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.enabled = True
        self._opened = False

    def show(self, image_bgr: np.ndarray | None) -> bool:
        """Show a frame. Returns True when the user asked to quit (q or Esc).

        The window opens at the frame's size, scaled down to fit the screen, so the
        overlay text stays readable; it can be resized by hand after.
        """
        if not self.enabled or image_bgr is None:
            return False
        try:
            if not self._opened:
                if not display_available():
                    raise cv2.error("no display (DISPLAY is not set)")
                cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
                cv2.resizeWindow(self.title, *fit_size((image_bgr.shape[1], image_bgr.shape[0])))
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
