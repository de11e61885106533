"""Pytest fixtures that run a real RTSP camera: ``tests/rtsp_server.py`` under the system Python.

Use them from a test module with ``from tests.rtsp_fixtures import rtsp_camera, rtsp_server``
or from ``tests/conftest.py`` with ``pytest_plugins = ["tests.rtsp_fixtures"]``.

The server needs GStreamer's RTSP server from Debian packages; without them the
tests that use these fixtures are skipped, naming the packages to install.
"""

from __future__ import annotations

import functools
import os
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = ["RtspServer", "gstreamer_missing", "rtsp_camera", "rtsp_server"]

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).resolve().parent / "rtsp_server.py"
DEBIAN_PACKAGES = (
    "python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav"
)
_PROBE = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
missing = [e for e in ("appsrc", "videotestsrc", "videoconvert", "x264enc", "rtph264pay", "decodebin")
           if Gst.ElementFactory.find(e) is None]
print(" ".join(missing))
"""


@functools.cache
def gstreamer_missing() -> str:
    """Why the RTSP server cannot run here, or "" when it can."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found; install the Debian packages: {DEBIAN_PACKAGES}"
    try:
        probe = subprocess.run([SYSTEM_PYTHON, "-c", _PROBE], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "probing GStreamer timed out"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        return f"GStreamer's RTSP server does not import ({last}); apt-get install {DEBIAN_PACKAGES}"
    if probe.stdout.strip():
        return f"GStreamer elements missing: {probe.stdout.strip()}; apt-get install {DEBIAN_PACKAGES}"
    return ""


class RtspServer:
    """One RTSP camera process that can be killed, frozen and brought back on the same port.

    Args:
        path: Mount path, e.g. ``"/cam"``.
        args: Extra ``rtsp_server.py`` arguments (``--clip``, ``--size``, ``--fps`` ...).
        user: User name for RTSP Basic auth (with ``password``), or None for no auth.
        password: The password.
        start_timeout_s: How long to wait for ``READY``.
    """

    def __init__(
        self,
        path: str = "/cam",
        args: tuple[str, ...] = (),
        user: str | None = None,
        password: str | None = None,
        start_timeout_s: float = 20.0,
    ) -> None:
        self.path = path
        self.args = args
        self.user = user
        self.password = password
        self.start_timeout_s = start_timeout_s
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self._log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed by close()

    @property
    def url(self) -> str:
        """The stream URL, with the credentials when the server has them."""
        return self.url_as(self.user, self.password)

    def url_as(self, user: str | None, password: str | None, path: str | None = None) -> str:
        """The URL with other credentials or another path (for failure tests)."""
        auth = f"{user}:{password}@" if user is not None and password is not None else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{path or self.path}"

    def start(self) -> RtspServer:
        """Start the server (on its old port when restarting) and wait for ``READY``."""
        if self.proc is not None:
            if self.proc.poll() is None:
                return self
            self.stop()  # reap the killed one
        cmd = [SYSTEM_PYTHON, str(SERVER_SCRIPT), "--port", str(self.port), "--path", self.path, *self.args]
        if self.user is not None:
            cmd += ["--user", self.user, "--password", str(self.password)]
        deadline = time.monotonic() + self.start_timeout_s
        while True:  # the old port can be briefly busy after a kill
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True)
            line = self._wait_ready(deadline)
            if line.startswith("READY"):
                self.port = int(line.split()[1])
                return self
            self.stop()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"RTSP server did not start: {line or 'no READY'}; log:\n{self.log()}")

    def _wait_ready(self, deadline: float) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(timeout=max(0.0, deadline - time.monotonic())):
                    return self.proc.stdout.readline().strip()  # "" when the process died
        return ""

    def log(self) -> str:
        """What the server wrote on stderr so far."""
        self._log.seek(0)
        return self._log.read()

    def kill(self) -> None:
        """SIGKILL: the camera vanishes mid-stream (connections reset)."""
        self._signal(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: the camera hangs (connections stay open, no more data)."""
        self._signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            if sig == signal.SIGKILL:
                self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers. Idempotent."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        self.stop()
        self._log.close()


@pytest.fixture
def rtsp_server() -> Iterator[Callable[..., RtspServer]]:
    """A factory: ``rtsp_server(path="/cam", args=(...), user=..., password=...)`` -> started server.

    Every server it starts is stopped at teardown. Skips the test when GStreamer's
    RTSP server is not installed.
    """
    reason = gstreamer_missing()
    if reason:
        pytest.skip(reason)
    servers: list[RtspServer] = []

    def start(**kwargs: object) -> RtspServer:
        server = RtspServer(**kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def rtsp_camera(rtsp_server: Callable[..., RtspServer]) -> RtspServer:
    """A small live camera: 320x240 test pattern at 30 fps on ``/cam``, no auth."""
    return rtsp_server(args=("--testsrc", "--size", "320x240", "--fps", "30"))
