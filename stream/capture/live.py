"""Live sources: webcams and network streams (RTSP, HTTP, RTMP ...).

One class, :class:`LiveSource`, serves both: a webcam is a ``cv2.VideoCapture``
opened by index, a stream one opened by URL through OpenCV's FFmpeg backend.
What makes it *live*:

- **Bounded blocking.** URLs are opened with ``CAP_PROP_OPEN_TIMEOUT_MSEC`` and
  ``CAP_PROP_READ_TIMEOUT_MSEC`` (OpenCV's default is to hang ~60 s on a frozen
  camera; with them a read returns within about twice the timeout).
- **No stale backlog.** FFmpeg's probe buffer is disabled (``fflags;nobuffer``:
  otherwise the first second of frames is replayed late) and the decoder runs
  on one thread (frame threading holds back one frame per extra thread). When
  the reader itself stalls (CPU starvation), an RTSP stream's backlog comes out
  as a burst of old frames: each frame's stream timestamp is compared with the
  clock and frames more than ``max(50 ms, 1.5 frames)`` behind the live edge are
  skipped undecoded (counted in :attr:`LiveSource.stale_skipped`). Keeping only
  the newest frames against a slow *consumer* is the job of :class:`CaptureThread`.
- **One frame, once.** Every frame returned comes from a successful ``grab()``;
  nothing is ever re-returned while waiting for the next one.
- **Reconnection.** A failed read (a URL) or no frame for ``read_timeout_s``
  (a webcam: transient grab failures are retried until then) releases the
  capture and reopens it with exponential backoff, until ``reconnect_budget_s``
  of continuous outage is spent; then :class:`SourceError`. ``read`` blocks
  across the outage and returns the next new frame; each gap is logged and
  kept in :attr:`LiveSource.gaps`. (A webcam read blocked inside the driver,
  V4L2 waits up to 10 s, cannot be cut short; the watchdog acts when it returns.)
- **No credentials in sight.** :attr:`LiveSource.name`, every message and every
  log record show the URL through :func:`stream.redact.redact_url`.

The first open fails fast with one clear error (wrong port, wrong path, bad
password, unknown host, no such webcam) unless ``retry_open=True``, in which case
a camera that is down (refused, unreachable, not publishing yet, unplugged) is
retried within the reconnection budget like a dropped connection is; input no
retry can mend (a malformed URL, an unknown scheme, rejected credentials) still
fails at once (:func:`is_lasting`). The engine opens live sources that way, on
their own capture threads, so a camera that is down at start is down alone.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

import cv2
import numpy as np

from stream.capture.ffmpeg_env import FFMPEG_ENV, FFMPEG_OPEN_LOCK
from stream.config import CaptureConfig
from stream.errors import SourceError
from stream.redact import redact_url

__all__ = ["CaptureFactory", "LiveSource", "VideoCaptureLike", "diagnose_stream", "is_stream_url", "open_capture"]

log = logging.getLogger(__name__)

_ENV_OPTIONS = FFMPEG_ENV
# The env var is process-global and read by OpenCV when a capture opens: set it, open, restore.
_ENV_LOCK = FFMPEG_OPEN_LOCK
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "rtspt": 554, "http": 80, "https": 443, "rtmp": 1935}
_WEBCAM_RETRY_PAUSE_S = 0.01
# The live edge may drift from the camera's clock by this much per second (1000 ppm: generous).
_CLOCK_DRIFT = 1e-3
# Skip stale frames for at most this long in a row, then deliver and re-anchor (a timestamp jump).
_MAX_SKIP_S = 1.0


class VideoCaptureLike(Protocol):
    """The part of ``cv2.VideoCapture`` a live source uses (fakes implement just this)."""

    def isOpened(self) -> bool: ...
    def grab(self) -> bool: ...
    def retrieve(self) -> tuple[bool, np.ndarray | None]: ...
    def get(self, prop_id: int) -> float: ...
    def release(self) -> None: ...


#: ``factory(target, params)`` opens a capture: ``target`` is a webcam index or a URL, ``params``
#: OpenCV open parameters (``[prop, value, ...]``). It may raise or return an unopened capture.
CaptureFactory = Callable[[int | str, Sequence[int]], VideoCaptureLike]


def is_stream_url(spec: str) -> bool:
    """True when ``spec`` looks like ``scheme://...`` (a network stream)."""
    return bool(_SCHEME.match(spec))


def _ffmpeg_options(url: str, transport: str) -> str:
    """FFmpeg capture options for ``url``, on top of what the user put in the env var."""
    user = os.environ.get(_ENV_OPTIONS, "")
    keys = {item.split(";", 1)[0] for item in user.split("|") if item}
    ours = []
    if url.lower().startswith("rtsp") and "rtsp_transport" not in keys:
        ours.append(f"rtsp_transport;{transport}")
    if "fflags" not in keys:
        ours.append("fflags;nobuffer")
    return "|".join([*ours, user] if user else ours)


def open_capture(target: int | str, params: Sequence[int], *, transport: str = "tcp") -> cv2.VideoCapture:
    """Open a ``cv2.VideoCapture`` for a webcam index or a stream URL (the default factory).

    Args:
        target: Webcam index, or URL opened with the FFmpeg backend.
        params: OpenCV open parameters, ``[prop, value, ...]``.
        transport: RTSP transport, ``"tcp"`` or ``"udp"``.

    Returns:
        The capture, opened or not (the caller checks ``isOpened()``).
    """
    if isinstance(target, int):
        # On Linux ask V4L2 directly: CAP_ANY falls through to other backends (obsensor) that
        # print their own errors for a missing camera.
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        cap = cv2.VideoCapture(target, backend, list(params))
        if cap.isOpened():
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # V4L2 honours it: fewer frames queued in the driver
        return cap
    with _ENV_LOCK:
        previous = os.environ.get(_ENV_OPTIONS)
        os.environ[_ENV_OPTIONS] = _ffmpeg_options(target, transport)
        try:
            return cv2.VideoCapture(target, cv2.CAP_FFMPEG, list(params))
        finally:
            if previous is None:
                os.environ.pop(_ENV_OPTIONS, None)
            else:
                os.environ[_ENV_OPTIONS] = previous


class LiveSource:
    """A webcam or a network stream, read newest-first with reconnection.

    Args:
        target: A webcam index (``0``) or a stream URL (``rtsp://user:pw@host:554/path``).
        config: Timeouts, reconnection budget and backoff, RTSP transport.
        capture_factory: Opens the capture (default :func:`open_capture`); tests inject fakes.
        retry_open: Retry the first open within ``reconnect_budget_s`` instead of failing at once.
        skip_stale: Skip RTSP frames that come out of a backlog (see the module docstring).

    Attributes:
        name: ``"webcam 0"`` or the URL with its password replaced by ``***``.
        reconnects: Outages that ended with frames flowing again.
        reconnect_attempts: Opens tried after a failure (successful or not).
        gaps: ``(t_start_s, duration_s)`` of each outage that ended, ``t_start_s`` in media
            time (seconds since the first open, the clock of ``t_media_s``).
        frames_read: Frames returned by :meth:`read`.
        stale_skipped: RTSP frames skipped because they were behind the live edge.
    """

    live = True

    def __init__(
        self,
        target: int | str,
        config: CaptureConfig | None = None,
        *,
        capture_factory: CaptureFactory | None = None,
        retry_open: bool = False,
        skip_stale: bool = True,
    ) -> None:
        self.target = target
        self.config = config or CaptureConfig()
        self.is_url = isinstance(target, str)
        self.name = redact_url(target) if isinstance(target, str) else f"webcam {target}"
        self.fps = 30.0
        self.size_wh = (0, 0)
        self.frame_count: int | None = None
        self.warning = ""
        self.reconnects = 0
        self.reconnect_attempts = 0
        self.gaps: list[tuple[float, float]] = []
        self.frames_read = 0
        self.stale_skipped = 0
        is_rtsp = isinstance(target, str) and target.lower().startswith("rtsp")
        # Only RTSP carries trustworthy capture timestamps (RTP); elsewhere they are synthesised.
        self._lag = _LiveEdge() if skip_stale and is_rtsp else None
        self._skip_since: float | None = None
        self._factory = capture_factory or self._default_factory
        self._retry_open = retry_open
        self._cap: VideoCaptureLike | None = None
        self._t_open = 0.0
        self._t_last_frame = 0.0
        self._outage_since: float | None = None
        self._outage_attempts = 0
        self._last_error = ""
        self._ever_opened = False
        self._resize_warned = False
        self._interrupted = threading.Event()

    # -- FrameSource -------------------------------------------------------------------------

    def open(self) -> None:
        """Open the camera or stream.

        Raises:
            SourceError: It cannot be opened (the message says why, without the password),
                or, with ``retry_open``, it did not come up within ``reconnect_budget_s``.
        """
        if self._cap is not None:
            return
        now = time.monotonic()
        self._t_open = self._t_last_frame = now
        try:
            self._cap = self._open_once(self.config.open_timeout_s)
        except SourceError as err:
            if not self._retry_open or self.config.reconnect_budget_s <= 0 or is_lasting(err):
                raise
            log.warning("%s; retrying for up to %.0f s", err, self.config.reconnect_budget_s)
            self._last_error = _reason(err)
            self._outage_since = now
            if not self._reconnect():
                # Stopped before it ever came up (Ctrl-C, --max-seconds): say why it was down.
                raise SourceError(f"source '{self.name}' could not be opened: {self._last_error}") from None
        self._describe(self._cap)

    def read(self) -> tuple[np.ndarray, float] | None:
        """Block until the next new frame and return it with its media time.

        Media time is seconds since :meth:`open`, on the monotonic clock. Across an
        outage the call blocks while reconnecting.

        Returns:
            ``(image_bgr, t_media_s)``, or None once :meth:`interrupt` was called.

        Raises:
            SourceError: Read before open, or the reconnection budget is spent.
        """
        if self._cap is None and self._outage_since is None:
            raise SourceError(f"source '{self.name}' read before open")
        while not self._interrupted.is_set():
            if self._cap is None and not self._reconnect():
                return None
            cap = self._cap
            assert cap is not None  # set by open() or _reconnect()
            # grab() says whether a *new* frame arrived; read() on some backends hands back the last one.
            grabbed = cap.grab()
            if grabbed and self._behind_live_edge(cap):
                continue
            image = self._retrieve(cap) if grabbed else None
            now = time.monotonic()
            if image is not None:
                self._frame_arrived(now)
                return self._fit(image), now - self._t_open
            if self.is_url or now - self._t_last_frame >= self.config.read_timeout_s:
                self._lose(
                    f"no frame for {now - self._t_last_frame:.1f} s"
                    if not self.is_url
                    else "the stream stopped (read failed or timed out)"
                )
            else:
                # A webcam grab can fail once (a corrupt frame, a driver hiccup): retry the same
                # device until the watchdog (read_timeout_s without a frame) says it is gone.
                self._interrupted.wait(_WEBCAM_RETRY_PAUSE_S)
        return None

    @property
    def ever_opened(self) -> bool:
        """Whether the camera or stream was open at least once."""
        return self._ever_opened

    @property
    def last_error(self) -> str:
        """Why the last open failed ("" before any failure)."""
        return self._last_error or "it did not come up"

    def close(self) -> None:
        """Release the capture. Idempotent."""
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()

    def interrupt(self) -> None:
        """Make a blocked :meth:`read` return None soon (thread-safe).

        A backoff wait ends at once; a read inside OpenCV ends within its read timeout.
        """
        self._interrupted.set()

    def __enter__(self) -> LiveSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _default_factory(self, target: int | str, params: Sequence[int]) -> VideoCaptureLike:
        return open_capture(target, params, transport=self.config.rtsp_transport)

    def _params(self, open_timeout_s: float) -> list[int]:
        if not self.is_url:
            return []
        return [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            max(1, round(open_timeout_s * 1000)),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            max(1, round(self.config.read_timeout_s * 1000)),
            # Frame threading delays output by one frame per extra decoder thread.
            cv2.CAP_PROP_N_THREADS,
            1,
        ]

    def _open_once(self, open_timeout_s: float) -> VideoCaptureLike:
        """One open attempt, its diagnosis included, within about ``open_timeout_s``; raises SourceError."""
        t_start = time.monotonic()
        try:
            cap = self._factory(self.target, self._params(open_timeout_s))
        except SourceError:
            raise
        except Exception as err:
            raise SourceError(f"source '{self.name}' could not be opened: {redact_url(str(err))}") from None
        if cap is not None and cap.isOpened():
            return cap
        if cap is not None:
            cap.release()
        if not self.is_url:
            why = "no such camera, or it is in use by another program"
        else:
            # The diagnosis gets what is left of the attempt's time (a mute server used it all up),
            # but at least half a second to say something.
            spent_s = time.monotonic() - t_start
            why = diagnose_stream(str(self.target), timeout_s=min(3.0, max(0.5, open_timeout_s - spent_s)),
                                  waited_s=spent_s if spent_s >= 1.0 else 0.0)
        raise SourceError(f"source '{self.name}' could not be opened: {why}")

    def _describe(self, cap: VideoCaptureLike | None) -> None:
        if cap is None:
            return
        self._ever_opened = True
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 1.0 <= fps <= 240.0 else 30.0
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width > 0 and height > 0 and self.size_wh == (0, 0):
            self.size_wh = (width, height)

    def _retrieve(self, cap: VideoCaptureLike) -> np.ndarray | None:
        ok, image = cap.retrieve()
        if not ok or image is None or image.size == 0:
            return None
        return image

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """Keep one frame size for the whole run (a camera may come back at another resolution)."""
        height, width = image.shape[:2]
        if self.size_wh == (0, 0):
            self.size_wh = (width, height)
        if (width, height) == self.size_wh:
            return image
        if not self._resize_warned:
            self._resize_warned = True
            log.warning(
                "source '%s': frames are now %dx%d; resizing them to %dx%d", self.name, width, height, *self.size_wh
            )
        return cv2.resize(image, self.size_wh, interpolation=cv2.INTER_AREA)

    def _behind_live_edge(self, cap: VideoCaptureLike) -> bool:
        """True when the grabbed frame is part of a backlog and should be skipped."""
        if self._lag is None:
            return False
        now = time.monotonic()
        behind_s = self._lag.behind_s(now, cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0)
        if behind_s <= max(0.05, 1.5 / self.fps):
            self._skip_since = None
            return False
        if self._skip_since is None:
            self._skip_since = now
        elif now - self._skip_since > _MAX_SKIP_S:
            # Still "behind" after a second of skipping: the timestamps jumped (or decoding cannot
            # keep up, where skipping does not help). Deliver, and measure from here.
            log.warning(
                "source '%s': frames stay %.0f ms behind; re-anchoring the live edge", self.name, behind_s * 1000
            )
            self._lag.reset()
            self._skip_since = None
            return False
        self.stale_skipped += 1
        return True

    def _frame_arrived(self, now: float) -> None:
        self.frames_read += 1
        if self._outage_since is not None:
            duration = now - self._outage_since
            self.gaps.append((self._outage_since - self._t_open, duration))
            self.reconnects += 1
            log.warning(
                "source '%s': frames resumed after a %.1f s gap (%d reconnect attempt%s)",
                self.name,
                duration,
                self._outage_attempts,
                "" if self._outage_attempts == 1 else "s",
            )
            self._outage_since = None
            self._outage_attempts = 0
        self._t_last_frame = now

    def _lose(self, why: str) -> None:
        """The capture is dead: release it and start (or continue) the outage."""
        self.close()
        self._last_error = why
        if self._outage_since is None:
            self._outage_since = self._t_last_frame
            log.warning("source '%s': %s; reconnecting (budget %.0f s)", self.name, why, self.config.reconnect_budget_s)

    def _reconnect(self) -> bool:
        """Reopen with exponential backoff. False when interrupted; raises when the budget is spent."""
        cfg = self.config
        assert self._outage_since is not None  # set by _lose() or open()
        backoff = cfg.reconnect_initial_backoff_s
        if self._outage_attempts:  # a reopened capture failed before any frame: keep backing off
            backoff = min(cfg.reconnect_max_backoff_s, backoff * 2**self._outage_attempts)
            if self._interrupted.wait(min(backoff, self._budget_left())):
                return False
        while not self._interrupted.is_set():
            left = self._budget_left()
            if left <= 0:
                attempts = f"{self._outage_attempts} reconnect attempt{'' if self._outage_attempts == 1 else 's'}"
                down_s = time.monotonic() - self._outage_since
                if not self._ever_opened:  # down since the start: it never came up
                    raise SourceError(f"source '{self.name}' could not be opened: {self._last_error} "
                                      f"(gave up after {attempts} in {down_s:.1f} s)")
                raise SourceError(f"source '{self.name}': no frames for {down_s:.1f} s; gave up after {attempts} "
                                  f"({self._last_error})")
            self._outage_attempts += 1
            self.reconnect_attempts += 1
            try:
                self._cap = self._open_once(min(cfg.open_timeout_s, max(left, 0.1)))
                self._describe(self._cap)
                if self._lag is not None:
                    self._lag.reset()  # a new session has new timestamps
                log.info("source '%s': reopened (attempt %d)", self.name, self._outage_attempts)
                return True
            except SourceError as err:
                self._last_error = _reason(err)
                wait = min(backoff, max(0.0, self._budget_left()))
                log.info(
                    "source '%s': reconnect attempt %d failed (%s); next in %.1f s",
                    self.name,
                    self._outage_attempts,
                    self._last_error,
                    wait,
                )
            if self._interrupted.wait(wait):
                return False
            backoff = min(cfg.reconnect_max_backoff_s, backoff * 2)
        return False

    def _budget_left(self) -> float:
        assert self._outage_since is not None
        return self.config.reconnect_budget_s - (time.monotonic() - self._outage_since)


class _LiveEdge:
    """How far a frame is behind the live edge, from its stream timestamp and the local clock.

    ``lag = t_arrival - t_stream`` is constant (network + decode delay) while the reader
    keeps up; a backlog read in a burst shows as frames whose lag exceeds the smallest
    lag seen. The reference may creep up by :data:`_CLOCK_DRIFT` per second so that a
    camera clock running slower than ours is not mistaken for a backlog.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._edge: float | None = None
        self._t_prev = 0.0
        self._pts_prev = float("-inf")

    def behind_s(self, t_now: float, pts_s: float) -> float:
        """Seconds behind the live edge (0 when on it; 0 too when the timestamps are unusable)."""
        usable = np.isfinite(pts_s) and pts_s > self._pts_prev
        self._pts_prev = pts_s if np.isfinite(pts_s) else self._pts_prev
        if not usable:  # no timestamps, or they went backwards: start over from this frame
            self._edge = None
            return 0.0
        lag = t_now - pts_s
        if self._edge is None:
            self._edge = lag
        else:
            self._edge = min(lag, self._edge + _CLOCK_DRIFT * (t_now - self._t_prev))
        self._t_prev = t_now
        return lag - self._edge


#: Reasons no retry can mend: the run refuses them at once, as bad input.
_LASTING = ("malformed", "has no host", "could not open this", "rejected (401", "needs a user name")


def is_lasting(err: SourceError) -> bool:
    """True when an open failed for a reason a retry cannot mend (a malformed URL, an unknown
    scheme, rejected or missing credentials); False for an outage (refused, unreachable,
    no answer, no stream yet, no such webcam now)."""
    reason = _reason(err)
    return any(mark in reason for mark in _LASTING)


def _reason(err: SourceError) -> str:
    """The part of an open error after 'could not be opened: '."""
    return str(err).split("could not be opened: ", 1)[-1]


def diagnose_stream(url: str, timeout_s: float = 3.0, *, waited_s: float = 0.0) -> str:
    """Say in a few words why a stream URL does not open (resolve, connect, RTSP DESCRIBE).

    Only called after OpenCV failed, so it costs nothing on the happy path. Credentials
    are never sent (an unsolicited Basic header would expose them to a Digest-only
    camera's network), so a 401 with credentials in the URL means they were rejected.
    The answer never contains the password.

    Args:
        url: The stream URL, credentials included (they are not sent, only checked for).
        timeout_s: Limit for the connection and the answer.
        waited_s: How long the caller already waited in vain (counted in a "no answer" reason).

    Returns:
        A short reason, such as ``"connection refused by 127.0.0.1:8554"``.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "the URL is malformed (check the host and port)"
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if not host:
        return "the URL has no host"
    port = port or _DEFAULT_PORTS.get(scheme)
    if port is None:
        return f"OpenCV's FFmpeg backend could not open this '{scheme}' stream"
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return f"host '{host}' could not be resolved"
    family, kind, proto, _, address = addresses[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout_s)
            sock.connect(address)
            if scheme not in ("rtsp", "rtspt"):
                return f"{host}:{port} accepts connections but the stream could not be opened"
            return _describe_rtsp(sock, url)
    except ConnectionRefusedError:
        return f"connection refused by {host}:{port} (nothing listens on that port)"
    except TimeoutError:
        return f"no answer from {host}:{port} within {round(waited_s + timeout_s, 1):g} s"
    except OSError as err:
        return f"{host}:{port}: {err.strerror or err}"


def _describe_rtsp(sock: socket.socket, url: str) -> str:
    parts = urlsplit(url)
    has_credentials = parts.username is not None
    netloc = parts.hostname or ""
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    bare = parts._replace(netloc=netloc).geturl()
    request = f"DESCRIBE {bare} RTSP/1.0\r\nCSeq: 1\r\nAccept: application/sdp\r\nUser-Agent: emostream\r\n\r\n"
    sock.sendall(request.encode())
    reply = sock.recv(4096).decode("latin-1")
    status = reply.split("\r\n", 1)[0].strip()
    fields = status.split(" ", 2)
    if len(fields) < 2 or not fields[0].startswith("RTSP/"):
        return "the server did not answer like an RTSP server (wrong port?)"
    code = fields[1]
    if code == "404":
        return f"the server has no stream at path '{parts.path or '/'}' (404 Not Found)"
    if code == "401":
        if has_credentials:
            return "the user name or password was rejected (401 Unauthorized)"
        return "the server needs a user name and password: rtsp://USER:PASSWORD@host/... (401 Unauthorized)"
    if code == "200":
        return "the server answered but the stream could not be decoded (try capture.rtsp_transport: udp)"
    return f"the server answered '{redact_url(status)}'"
