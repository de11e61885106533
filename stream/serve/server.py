"""uvicorn for the dashboard: a listening socket bound up front, and a server whose shutdown ends the streams."""

from __future__ import annotations

import socket
import threading
from types import FrameType

import uvicorn
from starlette.types import ASGIApp

from stream.errors import ConfigError

__all__ = ["DashboardServer", "listen"]


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket, bound before anything slow starts (a busy port is one line, at once).

    Raises:
        ConfigError: The address cannot be resolved or bound (in use, not this machine's, no permission).
    """
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        return socket.create_server(address, family=family)
    except OSError as err:
        raise ConfigError(f"--host {host} --port {port}: cannot listen there: {err.strerror or err}") from None


class DashboardServer(uvicorn.Server):
    """uvicorn, plus: a signal also sets ``closing``, so the endless responses (MJPEG, SSE) end at once.

    Args:
        app: The ASGI app (:func:`stream.serve.app.build_app` with the same ``closing``).
        closing: Set on shutdown.
    """

    def __init__(self, app: ASGIApp, closing: threading.Event) -> None:
        super().__init__(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                        timeout_graceful_shutdown=3))
        self.closing = closing
        self.signalled = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.signalled = True
        self.closing.set()
        super().handle_exit(sig, frame)

    def stop(self) -> None:
        """End the server from another thread (the pipeline failed, a benchmark is done)."""
        self.closing.set()
        self.should_exit = True
