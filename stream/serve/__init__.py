"""``emostream serve``: a local web dashboard of a running pipeline (the ``serve`` extra: Starlette, uvicorn).

:class:`Dashboard` is the pipeline sink (newest frame, recent events, health
per source); :func:`build_app` the Starlette app over it; :class:`DashboardServer`
the uvicorn server whose shutdown ends the streams. The names are imported on
first use, so ``stream.commands.serve`` registers the subcommand without the extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stream.serve.app import build_app
    from stream.serve.server import DashboardServer, listen
    from stream.serve.state import Dashboard

__all__ = ["Dashboard", "DashboardServer", "build_app", "listen"]

_HOME = {"Dashboard": "stream.serve.state", "DashboardServer": "stream.serve.server",
         "build_app": "stream.serve.app", "listen": "stream.serve.server"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'stream.serve' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
