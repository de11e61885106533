"""Live sources at the source level: a real RTSP camera (GStreamer) and an injected webcam.

Every RTSP frame carries a stamp (send time, sequence number) drawn by the
server, so the tests can tell a new frame from a repeated one. Waits are on
queues and events with timeouts, never on fixed sleeps.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.capture import CaptureThread, LiveSource, open_source
from stream.capture.live import diagnose_stream
from stream.config import CaptureConfig
from stream.errors import SourceError
from stream.records import EndOfStream, Frame, StageError
from tests import rtsp_fixtures
from tests.rtsp_fixtures import RtspServer
from tests.rtsp_server import read_stamp

# The RTSP camera fixtures (also registrable in conftest.py: pytest_plugins = ["tests.rtsp_fixtures"]).
rtsp_server = rtsp_fixtures.rtsp_server
rtsp_camera = rtsp_fixtures.rtsp_camera

PASSWORD = "Sup3r-s3cret"
# Short timeouts keep the failure tests quick; the defaults are in CaptureConfig.
FAST = CaptureConfig(
    live_buffer=2,
    open_timeout_s=3.0,
    read_timeout_s=1.0,
    reconnect_budget_s=3.0,
    reconnect_initial_backoff_s=0.1,
    reconnect_max_backoff_s=0.5,
)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def next_frame(capture: CaptureThread, timeout_s: float = 10.0) -> Frame:
    item = capture.frames.get(timeout=timeout_s)
    if isinstance(item, StageError):
        raise item.error
    assert isinstance(item, Frame), f"expected a frame, got {item!r}"
    return item


def next_end(capture: CaptureThread, timeout_s: float) -> EndOfStream | StageError:
    """Skip frames until the end marker."""
    deadline = time.monotonic() + timeout_s
    while True:
        item = capture.frames.get(timeout=max(0.01, deadline - time.monotonic()))
        if not isinstance(item, Frame):
            return item


def stamp_seq(frame: Frame) -> int:
    stamp = read_stamp(frame.image_bgr)
    assert stamp is not None, "the server's stamp did not survive encoding"
    return stamp[1]


# --- a real RTSP camera -------------------------------------------------------------------------


def test_reads_live_rtsp_frames_once_each(rtsp_camera: RtspServer) -> None:
    source = LiveSource(rtsp_camera.url, FAST)
    source.open()
    assert source.live and source.size_wh == (320, 240) and source.fps == pytest.approx(30, abs=1)
    with CaptureThread(source, FAST.live_buffer, threading.Event()) as capture:
        frames = [next_frame(capture) for _ in range(30)]
    seqs = [stamp_seq(f) for f in frames]
    assert all(b > a for a, b in itertools.pairwise(seqs)), f"a frame came twice or late: {seqs}"
    assert [f.index for f in frames] == sorted({f.index for f in frames})
    assert all(b.t_media_s > a.t_media_s for a, b in itertools.pairwise(frames))
    assert frames[0].image_bgr.shape == (240, 320, 3)
    assert frames[0].source == rtsp_camera.url


def stamp_age_ms(image_bgr: np.ndarray) -> float:
    stamp = read_stamp(image_bgr)
    assert stamp is not None
    return time.time() * 1000.0 - stamp[0]


@pytest.mark.parametrize("skip_stale", [True, False])
def test_a_stalled_reader_skips_the_backlog(rtsp_camera: RtspServer, skip_stale: bool) -> None:
    """After the reader stalls, the next frame is the live one, not the oldest of the backlog."""
    source = LiveSource(rtsp_camera.url, FAST, skip_stale=skip_stale)
    source.open()
    try:
        for _ in range(10):
            assert source.read() is not None
        time.sleep(0.6)  # the stall under test (CPU starvation), not a wait for work
        item = source.read()
        assert item is not None
        age_ms = stamp_age_ms(item[0])
    finally:
        source.close()
    if skip_stale:
        assert source.stale_skipped >= 10
        assert age_ms < 200, f"a {age_ms:.0f} ms old frame came out of the backlog"
    else:  # what OpenCV alone does: the oldest buffered frame
        assert source.stale_skipped == 0 and age_ms > 450


def test_udp_transport(rtsp_camera: RtspServer) -> None:
    cfg = CaptureConfig(open_timeout_s=3.0, read_timeout_s=1.0, rtsp_transport="udp")
    source = LiveSource(rtsp_camera.url, cfg)
    source.open()
    with CaptureThread(source, 2, threading.Event()) as capture:
        seqs = [stamp_seq(next_frame(capture)) for _ in range(10)]
    assert seqs == sorted(set(seqs))


def test_camera_killed_and_back_on_same_port(
    rtsp_server: Callable[..., RtspServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = rtsp_server(args=("--testsrc", "--size", "320x240"), user="viewer", password=PASSWORD)
    port = server.port
    cfg = CaptureConfig(
        open_timeout_s=3.0,
        read_timeout_s=1.0,
        reconnect_budget_s=20.0,
        reconnect_initial_backoff_s=0.1,
        reconnect_max_backoff_s=0.5,
    )
    caplog.set_level(logging.INFO, logger="stream.capture.live")
    source = LiveSource(server.url, cfg)
    source.open()
    with CaptureThread(source, 2, threading.Event()) as capture:
        before = [next_frame(capture) for _ in range(10)]
        server.kill()

        def bring_back() -> None:  # once the source has noticed and is retrying
            _wait_for(lambda: source.reconnect_attempts >= 2, 10)
            server.start()

        restarter = threading.Thread(target=bring_back)
        restarter.start()
        after = next_frame(capture, timeout_s=20)
        while after.t_media_s <= before[-1].t_media_s + 0.2:  # frames decoded before the kill
            after = next_frame(capture, timeout_s=20)
        more = [next_frame(capture) for _ in range(5)]
        restarter.join(timeout=20)
    assert server.port == port
    assert source.reconnects == 1 and source.reconnect_attempts >= 2
    assert len(source.gaps) == 1
    t_gap, duration = source.gaps[0]
    assert before[-1].t_media_s - 0.1 <= t_gap <= after.t_media_s
    assert 0 < duration <= after.t_media_s - before[-1].t_media_s + 0.1
    assert [f.index for f in [*before, after, *more]] == sorted({f.index for f in [*before, after, *more]})
    assert stamp_seq(more[-1]) > stamp_seq(after)
    text = caplog.text
    assert "reconnecting" in text and "frames resumed after a" in text
    assert PASSWORD not in text and "viewer:***@" in text


def test_camera_that_never_comes_back_gives_up_within_budget(
    rtsp_camera: RtspServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = LiveSource(rtsp_camera.url, FAST)
    source.open()
    with CaptureThread(source, 2, threading.Event()) as capture:
        next_frame(capture)
        rtsp_camera.kill()
        t_kill = time.monotonic()
        end = next_end(capture, timeout_s=FAST.reconnect_budget_s + 10)
        elapsed = time.monotonic() - t_kill
    assert isinstance(end, StageError) and isinstance(end.error, SourceError)
    message = str(end.error)
    assert message.startswith(f"source '{rtsp_camera.url}': no frames for ")
    assert "gave up after" in message and "reconnect attempt" in message and "connection refused" in message
    assert "\n" not in message
    # The budget counts from the last frame; one open timeout of margin at most.
    assert elapsed <= FAST.reconnect_budget_s + FAST.read_timeout_s * 2 + 1.5
    assert source.reconnects == 0 and source.reconnect_attempts >= 2


def test_frozen_camera_is_detected_by_the_read_timeout(rtsp_camera: RtspServer) -> None:
    """SIGSTOP: the TCP connection stays up but nothing arrives (OpenCV alone would block ~60 s)."""
    source = LiveSource(rtsp_camera.url, FAST)
    source.open()
    with CaptureThread(source, 2, threading.Event()) as capture:
        next_frame(capture)
        rtsp_camera.freeze()
        t_freeze = time.monotonic()
        end = next_end(capture, timeout_s=FAST.reconnect_budget_s + 15)
        elapsed = time.monotonic() - t_freeze
    assert isinstance(end, StageError) and isinstance(end.error, SourceError)
    assert "gave up after" in str(end.error)
    assert elapsed <= FAST.reconnect_budget_s + FAST.read_timeout_s * 2 + FAST.open_timeout_s + 1.0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://127.0.0.1:{closed}/cam", "connection refused by 127.0.0.1:{closed}"),
        ("rtsp://127.0.0.1:{port}/nope", "no stream at path '/nope' (404 Not Found)"),
        ("rtsp://viewer:wrong-pass@127.0.0.1:{port}/cam", "user name or password was rejected (401"),
        ("rtsp://127.0.0.1:{port}/cam", "needs a user name and password"),
        ("rtsp://viewer:{password}@nonexistent.invalid/cam", "host 'nonexistent.invalid' could not be resolved"),
        ("http://viewer:{password}@127.0.0.1:{closed}/mjpg", "connection refused by 127.0.0.1:{closed}"),
    ],
    ids=["wrong-port", "wrong-path", "wrong-password", "no-credentials", "unknown-host", "http-closed"],
)
def test_bad_stream_fails_fast_with_a_clear_message(
    rtsp_server: Callable[..., RtspServer],
    capfd: pytest.CaptureFixture[str],
    url: str,
    expected: str,
) -> None:
    server = rtsp_server(args=("--testsrc", "--size", "320x240"), user="viewer", password=PASSWORD)
    fields = {"port": server.port, "closed": closed_port(), "password": PASSWORD}
    url, expected = url.format(**fields), expected.format(**fields)
    t0 = time.monotonic()
    with pytest.raises(SourceError) as caught:
        open_source(url, FAST)
    assert time.monotonic() - t0 < 2.0
    message = str(caught.value)
    assert expected in message
    assert message.startswith("source '") and "could not be opened: " in message
    assert PASSWORD not in message and "wrong-pass" not in message
    native = capfd.readouterr()
    assert PASSWORD not in native.out + native.err


def test_password_never_shown(
    rtsp_server: Callable[..., RtspServer],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    server = rtsp_server(args=("--testsrc", "--size", "320x240"), user="viewer", password=PASSWORD)
    caplog.set_level(logging.DEBUG)
    source = open_source(server.url, FAST)
    assert isinstance(source, LiveSource)
    assert source.name == server.url.replace(PASSWORD, "***")
    with CaptureThread(source, 2, threading.Event()) as capture:
        frame = next_frame(capture)
        server.kill()
        end = next_end(capture, timeout_s=FAST.reconnect_budget_s + 10)
    assert isinstance(end, StageError)
    shown = [
        frame.source,
        source.name,
        str(end.error),
        repr(end.error),
        caplog.text,
        *(r.getMessage() for r in caplog.records),
        *capfd.readouterr(),
    ]
    assert all(PASSWORD not in text for text in shown)
    assert "viewer:***@" in str(end.error)


def test_diagnose_an_rtsp_server_that_answers_nothing() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        why = diagnose_stream(f"rtsp://u:{PASSWORD}@127.0.0.1:{port}/cam", timeout_s=0.3)
    assert why == f"no answer from 127.0.0.1:{port} within 0.3 s"


# --- a webcam, through an injected capture object ----------------------------------------------


class FakeCamera:
    """A ``cv2.VideoCapture`` stand-in: ``frames`` numbered frames, then grabs fail.

    Frame ``k`` carries ``k`` in its first pixel bytes, so a repeat would show.
    """

    def __init__(
        self, first: int, frames: int, size_wh: tuple[int, int] = (64, 48), glitch_at: int | None = None
    ) -> None:
        self.next = first
        self.end = first + frames
        self.size_wh = size_wh
        self.glitch_at = glitch_at
        self.released = False
        self.grabbed = False

    def isOpened(self) -> bool:
        return not self.released

    def grab(self) -> bool:
        time.sleep(0.001)  # a camera paces its frames; keep the loop from spinning
        if self.glitch_at is not None and self.next == self.glitch_at:
            self.glitch_at = None
            return False
        self.grabbed = self.next < self.end and not self.released
        return self.grabbed

    def retrieve(self) -> tuple[bool, np.ndarray | None]:
        if not self.grabbed:
            return False, None
        self.grabbed = False
        image = np.zeros((self.size_wh[1], self.size_wh[0], 3), np.uint8)
        image[0, 0, :2] = divmod(self.next, 256)
        self.next += 1
        return True, image

    def get(self, prop_id: int) -> float:
        return {
            cv2.CAP_PROP_FPS: 30.0,
            cv2.CAP_PROP_FRAME_WIDTH: float(self.size_wh[0]),
            cv2.CAP_PROP_FRAME_HEIGHT: float(self.size_wh[1]),
        }.get(prop_id, 0.0)

    def release(self) -> None:
        self.released = True


class ScriptedFactory:
    """Hands out the scripted cameras in turn (None: the device does not open); then none open."""

    def __init__(self, *cameras: FakeCamera | None) -> None:
        self.cameras = list(cameras)
        self.calls: list[tuple[int | str, Sequence[int]]] = []

    def __call__(self, target: int | str, params: Sequence[int]) -> FakeCamera:
        self.calls.append((target, list(params)))
        camera = self.cameras.pop(0) if self.cameras else None
        if camera is None:
            camera = FakeCamera(0, 0)
            camera.released = True
        return camera


def counter(frame: Frame) -> int:
    hi, lo = frame.image_bgr[0, 0, :2]
    return int(hi) * 256 + int(lo)


WEBCAM = CaptureConfig(
    read_timeout_s=0.2, reconnect_budget_s=1.0, reconnect_initial_backoff_s=0.05, reconnect_max_backoff_s=0.2
)


def test_webcam_frames_reconnect_then_give_up(caplog: pytest.LogCaptureFixture) -> None:
    factory = ScriptedFactory(FakeCamera(0, 20, glitch_at=5), None, FakeCamera(20, 20))
    source = LiveSource(0, WEBCAM, capture_factory=factory)
    source.open()
    assert source.name == "webcam 0" and source.size_wh == (64, 48) and source.fps == 30.0
    caplog.set_level(logging.WARNING, logger="stream.capture.live")
    # A big queue keeps every frame, so the test sees each one the source produced.
    with CaptureThread(source, 100, threading.Event()) as capture:
        frames = []
        end = None
        while end is None:
            item = capture.frames.get(timeout=10)
            if isinstance(item, Frame):
                frames.append(item)
            else:
                end = item
    assert [counter(f) for f in frames] == list(range(40)), "each frame exactly once, in order"
    assert factory.calls[0] == (0, [])  # no URL timeouts for a device
    assert source.reconnects == 1 and len(source.gaps) == 1
    assert source.gaps[0][1] >= WEBCAM.read_timeout_s  # the watchdog waited before giving up on it
    assert isinstance(end, StageError) and isinstance(end.error, SourceError)
    assert str(end.error).startswith("source 'webcam 0': no frames for ")
    assert "gave up after" in str(end.error)
    assert "frames resumed after a" in caplog.text


def test_webcam_that_does_not_exist() -> None:
    source = LiveSource(3, WEBCAM, capture_factory=ScriptedFactory(None))
    with pytest.raises(SourceError, match=r"^source 'webcam 3' could not be opened: no such camera"):
        source.open()


def test_webcam_open_retried_when_asked() -> None:
    factory = ScriptedFactory(None, None, FakeCamera(0, 3))
    source = LiveSource(0, WEBCAM, capture_factory=factory, retry_open=True)
    source.open()
    assert source.read() is not None
    assert len(factory.calls) == 3


def test_webcam_back_at_another_size_keeps_the_first_size() -> None:
    factory = ScriptedFactory(FakeCamera(0, 2), FakeCamera(2, 2, size_wh=(128, 96)))
    source = LiveSource(0, WEBCAM, capture_factory=factory)
    source.open()
    shapes = [source.read()[0].shape for _ in range(4)]  # type: ignore[index]
    assert shapes == [(48, 64, 3)] * 4


def test_close_interrupts_a_reconnecting_source() -> None:
    """Shutdown must not wait out a 30 s reconnect budget."""
    cfg = CaptureConfig(
        read_timeout_s=0.05, reconnect_budget_s=30.0, reconnect_initial_backoff_s=5.0, reconnect_max_backoff_s=5.0
    )
    source = LiveSource(0, cfg, capture_factory=ScriptedFactory(FakeCamera(0, 1)))
    source.open()
    capture = CaptureThread(source, 2, threading.Event()).start()
    next_frame(capture)
    assert _wait_for(lambda: source.reconnect_attempts >= 1, 5)
    t0 = time.monotonic()
    capture.close()
    assert time.monotonic() - t0 < 1.0
    assert not capture._thread.is_alive()


def test_dispatch_webcam_index_and_url() -> None:
    with pytest.raises(SourceError, match=r"^source 'webcam 7' could not be opened"):
        open_source("7", CaptureConfig(open_timeout_s=1.0))
    port = closed_port()
    with pytest.raises(SourceError, match=rf"^source 'rtsp://u:\*\*\*@127.0.0.1:{port}/x' could not be opened"):
        open_source(f"rtsp://u:{PASSWORD}@127.0.0.1:{port}/x", CaptureConfig(open_timeout_s=1.0))


@pytest.mark.camera
@pytest.mark.skipif(not Path("/dev/video0").exists(), reason="no webcam at /dev/video0")
def test_real_webcam() -> None:
    source = open_source("0", CaptureConfig())
    with CaptureThread(source, 2, threading.Event()) as capture:
        frames = [next_frame(capture) for _ in range(10)]
    assert all(f.image_bgr.ndim == 3 for f in frames)


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    done = threading.Event()
    while not condition():
        if time.monotonic() >= deadline:
            return False
        done.wait(0.01)
    return True
