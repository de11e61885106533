"""A logging handler that hands the library's warnings to a callback.

A camera reconnecting or a stalled source is logged as a warning; a dashboard or a
fleet driver shows it as that source's last error. The callback must not block.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["WarningTap"]


class WarningTap(logging.Handler):
    """Calls ``note(record)`` for every warning or error (a failing ``note`` never reaches the logger's caller).

    Args:
        note: Receives each record.
    """

    def __init__(self, note: Callable[[logging.LogRecord], None]) -> None:
        super().__init__(logging.WARNING)
        self.note = note

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.note(record)
        except Exception:  # a log handler must never raise into the code that logged
            self.handleError(record)
