"""``emostream run rtsp://...`` end to end, against a real RTSP camera (GStreamer subprocess)."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stream.render.outputs import partial_path
from tests import rtsp_fixtures
from tests.conftest import CLI_CWD, run_cli
from tests.rtsp_fixtures import RtspServer
from tests.test_live_sources import closed_port
from tests.test_pipeline_cli import assert_one_error_line, count_frames

rtsp_server = rtsp_fixtures.rtsp_server

PASSWORD = "Sup3r-s3cret"
CAMERA_ARGS = ("--testsrc", "--size", "320x240", "--fps", "30")


@pytest.fixture
def camera(rtsp_server: Callable[..., RtspServer]) -> RtspServer:
    return rtsp_server(args=CAMERA_ARGS, user="viewer", password=PASSWORD)


def fast_config(tmp_path: Path, budget_s: float) -> Path:
    path = tmp_path / "live.yaml"
    path.write_text(
        "capture:\n"
        "  open_timeout_s: 3.0\n"
        "  read_timeout_s: 1.0\n"
        f"  reconnect_budget_s: {budget_s}\n"
        "  reconnect_initial_backoff_s: 0.1\n"
        "  reconnect_max_backoff_s: 0.5\n"
    )
    return path


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stream", *args],
        cwd=CLI_CWD,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_events(path: Path, count: int, proc: subprocess.Popen[str], timeout_s: float = 30.0) -> None:
    """Until the event log holds ``count`` lines (the run is live and processing).

    While the run writes, the log is under its partial name (``ev.partial.jsonl``).
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for candidate in (path, partial_path(path)):
            if candidate.exists() and candidate.read_text().count("\n") >= count:
                return
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.communicate()[1]}")
        time.sleep(0.05)  # polling a file another process writes
    pytest.fail(f"no {count} events within {timeout_s} s")


def test_rtsp_run_max_frames_password_hidden(camera: RtspServer, tmp_path: Path) -> None:
    out, ev = tmp_path / "live.mp4", tmp_path / "live.jsonl"
    proc = run_cli(
        "run",
        camera.url,
        "--output",
        str(out),
        "--events",
        str(ev),
        "--no-display",
        "--max-frames",
        "30",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    events = read_events(ev)
    frames = [e["frame"] for e in events]
    assert 0 < len(frames) <= 30 and frames == sorted(set(frames))
    assert count_frames(out) == len(events)
    shown = proc.stdout + proc.stderr + ev.read_text()
    assert PASSWORD not in shown
    assert "viewer:***@" in proc.stderr


def test_rtsp_run_max_seconds(camera: RtspServer, tmp_path: Path) -> None:
    ev = tmp_path / "live.jsonl"
    t0 = time.monotonic()
    proc = run_cli(
        "run",
        camera.url,
        "--output",
        str(tmp_path / "live.mp4"),
        "--events",
        str(ev),
        "--no-display",
        "--max-seconds",
        "2",
        "--no-progress",
    )
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - t0 < 20
    assert len(read_events(ev)) >= 20  # 30 fps for 2 s, minus start-up


def test_rtsp_run_continues_after_the_camera_comes_back(camera: RtspServer, tmp_path: Path) -> None:
    out, ev = tmp_path / "live.mp4", tmp_path / "live.jsonl"
    proc = start_cli(
        "run",
        camera.url,
        "--config",
        str(fast_config(tmp_path, 20.0)),
        "--output",
        str(out),
        "--events",
        str(ev),
        "--no-display",
        "--max-seconds",
        "8",
        "--no-progress",
    )
    try:
        wait_for_events(ev, 10, proc)
        camera.kill()
        camera.start()  # same port, same path
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    events = read_events(ev)
    times = [e["t"] for e in events]
    jumps = [(a, b) for a, b in itertools.pairwise(times) if b - a > 0.3]
    assert len(jumps) == 1, f"expected one gap in the event log, got {jumps}"
    # The first frame after the outage says so. (On a loaded machine the first connection can fail
    # too, while the server starts: then the very first frame carries that wait, rightly.)
    marked = [e for e in events[1:] if "gap_s" in e]
    assert len(marked) == 1 and marked[0]["t"] == jumps[0][1]
    assert marked[0]["gap_s"] > 0.3
    after = [t for t in times if t > jumps[0][1] - 1e-9]
    assert len(after) >= 10, "frames resumed after the gap"
    assert count_frames(out) == len(events)
    assert "frames resumed after a" in stderr
    assert PASSWORD not in stderr


def test_rtsp_camera_gone_for_good_exits_2_within_budget(camera: RtspServer, tmp_path: Path) -> None:
    budget_s = 2.0
    out, ev = tmp_path / "live.mp4", tmp_path / "live.jsonl"
    proc = start_cli(
        "run",
        camera.url,
        "--config",
        str(fast_config(tmp_path, budget_s)),
        "--output",
        str(out),
        "--events",
        str(ev),
        "--no-display",
        "--no-progress",
    )
    try:
        wait_for_events(ev, 10, proc)
        camera.kill()
        t_kill = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        elapsed = time.monotonic() - t_kill
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"emostream: error: source '{camera.url.replace(PASSWORD, '***')}': no frames for ")
    assert "gave up after" in last
    assert PASSWORD not in stderr
    assert elapsed < budget_s + 6  # + detection (read timeout), an open timeout, shutdown
    events = read_events(ev)  # complete lines: the log was finalised
    assert len(events) >= 10 and count_frames(out) == len(events)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("rtsp://viewer:wrong-{password}@127.0.0.1:{port}/cam", "401 Unauthorized"),
        ("rtsp://127.0.0.1:{port}/cam", "needs a user name and password"),
    ],
    ids=["wrong-password", "no-credentials"],
)
def test_live_source_no_retry_can_mend_is_refused_at_once(camera: RtspServer, tmp_path: Path, url: str,
                                                          fragment: str) -> None:
    url = url.format(password=PASSWORD, port=camera.port)
    proc = run_cli("run", url, "--output", str(tmp_path / "o.mp4"), "--no-display", timeout=30)
    assert_one_error_line(proc, fragment)
    assert PASSWORD not in proc.stderr + proc.stdout
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("rtsp://viewer:{password}@127.0.0.1:{closed}/cam", "connection refused"),
        ("rtsp://viewer:{password}@127.0.0.1:{port}/nope", "404 Not Found"),
        ("rtsp://viewer:{password}@nonexistent.invalid/cam", "could not be resolved"),
        ("7", "source 'webcam 7' could not be opened"),
    ],
    ids=["wrong-port", "wrong-path", "unknown-host", "no-webcam"],
)
def test_live_source_down_at_start_is_retried_then_named(camera: RtspServer, tmp_path: Path, url: str,
                                                         fragment: str) -> None:
    # A camera that is down at start is an outage: retried like one that dies later, within the
    # reconnect budget (1 s here), then the run ends with exit 2 and the last line names it.
    url = url.format(password=PASSWORD, port=camera.port, closed=closed_port())
    config = tmp_path / "c.yaml"
    config.write_text("capture:\n  reconnect_budget_s: 1\n  reconnect_initial_backoff_s: 0.2\n")
    proc = run_cli("run", url, "--output", str(tmp_path / "o.mp4"), "--no-display", "--config", str(config),
                   timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert any("retrying for up to 1 s" in line for line in lines), lines
    assert lines[-1].startswith("emostream: error: ") and fragment in lines[-1], lines
    assert PASSWORD not in proc.stderr + proc.stdout
    assert not (tmp_path / "o.mp4").exists()  # not one frame: nothing published


def test_camera_down_at_start_beside_a_file_is_down_alone(clips: dict[str, Path], tmp_path: Path) -> None:
    vga_clip = clips["vga"]
    # Issue 17: the file is processed whole while the camera is retried; exit 2 at the end, naming it.
    config = tmp_path / "c.yaml"
    config.write_text("capture:\n  reconnect_budget_s: 2\n  reconnect_initial_backoff_s: 0.2\n")
    camera = f"rtsp://127.0.0.1:{closed_port()}/cam"
    proc = run_cli("run", camera, str(vga_clip), "--out-dir", str(tmp_path / "out"), "--no-display",
                   "--no-progress", "--config", str(config), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    events = read_events(tmp_path / "out" / f"{vga_clip.stem}.events.jsonl")
    assert len(events) == 120 and [e["frame"] for e in events] == list(range(120))
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("emostream: error: source 0 (cam)") and "connection refused" in last, last


def test_max_seconds_bounds_opening_a_port_that_never_answers(tmp_path: Path) -> None:
    # A plain TCP server that accepts connections and never says a word (no GStreamer needed):
    # with --max-seconds the open gives up by then, not after open_timeout_s (10 s) + a diagnosis.
    max_seconds = 2.0
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    first_accept = threading.Event()

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            accepted.append(conn)
            first_accept.set()

    threading.Thread(target=accept, daemon=True).start()
    url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/cam"
    proc = start_cli("run", url, "--max-seconds", f"{max_seconds:g}", "--output", str(tmp_path / "o.mp4"),
                     "--events", str(tmp_path / "ev.jsonl"), "--no-display", "--no-progress")
    try:
        assert first_accept.wait(60), "the run never connected"
        t_open = time.monotonic()  # the clock starts at the connection: interpreter and model start-up vary
        _, stderr = proc.communicate(timeout=60)
        elapsed = time.monotonic() - t_open
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
        for conn in accepted:
            conn.close()
    assert proc.returncode == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    # A camera down at start is retried (one warning), then named when the run ends.
    assert len(lines) == 2 and "retrying" in lines[0], stderr
    assert f"source '{url}' could not be opened: no answer from 127.0.0.1:" in lines[-1], lines[-1]
    assert elapsed < max_seconds + 3.0, f"gave up after {elapsed:.1f} s: {lines[-1]}"  # was 11-14 s
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "ev.jsonl").exists()
