"""``GET /metrics`` of a running ``emostream serve`` (a subprocess on the bundled clip, played as a live
camera), scraped over HTTP with the dashboard's token and parsed with prometheus_client's own text parser;
and the source health behind ``up``, ``state`` and ``reconnects``, step by step."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stream.errors import SourceError
from stream.records import Frame, FrameResult
from stream.sinks.health import GAP_S, STALE_S, SourceHealth, topic_name
from stream.summary import RunSummary
from tests.cli_run import interrupt, running_cli

pytest.importorskip("starlette", reason="the serve extra is not installed: pip install -e '.[serve]'")
pytest.importorskip("prometheus_client", reason="the serve extra is not installed: pip install -e '.[serve]'")

from prometheus_client.parser import text_string_to_metric_families

CLIP = Path(__file__).resolve().parent.parent / "stream" / "assets" / "carphone_640x480.mp4"
TOKEN = "metrics-test-token-0123456789"


def scrape(port: int, token: str | None = TOKEN) -> tuple[int, str, dict[str, dict[tuple, float]]]:
    """Status, content type and ``{sample name: {sorted labels: value}}`` of one scrape."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text, ctype = response.read().decode(), response.headers["Content-Type"]
    except urllib.error.HTTPError as err:
        return err.code, "", {}
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return 200, ctype, samples


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int, Path]]:
    stderr = tmp_path / "serve.stderr"
    env = {**os.environ, "EMOSTREAM_TOKEN": TOKEN}
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "stream", "serve", str(CLIP), "--port", "0", "--out-dir",
                                 str(tmp_path / "out")], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        deadline = time.monotonic() + 60
        port = 0
        while time.monotonic() < deadline and not port:
            found = re.search(r"dashboard on http://\S+:(\d+)/", stderr.read_text())
            if found:
                port = int(found[1])
            elif proc.poll() is not None:
                pytest.fail(f"emostream serve ended early: {stderr.read_text()}")
            else:
                time.sleep(0.05)  # polling a file another process writes
        assert port, f"emostream serve did not start: {stderr.read_text()}"
        yield proc, port, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_metrics_of_a_running_serve(served: tuple[subprocess.Popen, int, Path]) -> None:
    proc, port, stderr = served
    assert scrape(port, token=None)[0] == 401 and scrape(port, token="wrong")[0] == 403
    src = (("source", "carphone_640x480"),)
    deadline = time.monotonic() + 60
    while True:  # until a second of frames went through
        status, ctype, first = scrape(port)
        assert status == 200 and ctype.startswith("text/plain; version=")
        if first.get("emostream_frames_processed_total", {}).get(src, 0) >= 30 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # the clip plays at 30 frames/s in the server
    processed = first["emostream_frames_processed_total"][src]
    assert processed >= 30, stderr.read_text()
    assert first["emostream_faces_total"][src] >= processed - 5  # a face in every frame of the clip
    assert first["emostream_frames_dropped_total"][src] >= 0
    assert first["emostream_source_up"][src] == 1.0
    states = {dict(k)["state"]: v for k, v in first["emostream_source_state"].items()}
    assert states == {"starting": 0.0, "up": 1.0, "down": 0.0, "ended": 0.0, "failed": 0.0, "removed": 0.0}
    assert first["emostream_source_reconnects_total"][src] == 0.0
    assert 10 < first["emostream_source_fps"][src] < 45
    buckets = {dict(k)["le"]: v for k, v in first["emostream_frame_latency_seconds_bucket"].items()}
    assert buckets["+Inf"] == first["emostream_frame_latency_seconds_count"][src]
    assert abs(buckets["+Inf"] - processed) <= 2  # one frame may pass between the two reads
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    assert 0 < first["emostream_frame_latency_seconds_sum"][src] < buckets["+Inf"] * 5.0
    shares = {dict(k)["emotion"]: v for k, v in first["emostream_emotion_share"].items()}
    assert set(shares) == {"angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"}
    assert sum(shares.values()) == pytest.approx(1.0)
    per_label = {dict(k)["emotion"]: v for k, v in first["emostream_emotion_faces_total"].items()}
    assert sum(per_label.values()) == pytest.approx(first["emostream_faces_total"][src], abs=2)

    time.sleep(0.5)  # a later scrape: the counters went on
    later = scrape(port)[2]
    assert later["emostream_frames_processed_total"][src] > processed
    assert later["emostream_frame_latency_seconds_count"][src] > first["emostream_frame_latency_seconds_count"][src]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130, stderr.read_text()


def _result(index: int, t_media_s: float) -> FrameResult:
    return FrameResult(Frame("cam", index, t_media_s, 0.0, np.zeros((2, 2, 3), np.uint8)), [])


def test_source_health_states_and_reconnects() -> None:
    summary = RunSummary(source="rtsp://u:pw@cam/a b", source_id=3)
    health = SourceHealth(summary)
    assert health.name == "rtsp___u_____cam_a_b" and topic_name(RunSummary(source="x", name="hall/1")) == "hall_1"
    assert health.state(100.0) == "starting"
    for i in range(10):
        health.on_frame(_result(i, i / 10), now=100.0 + i / 10)
        summary.frames_processed += 1
    assert health.state(101.0) == "up" and health.state(100.9 + STALE_S + 0.01) == "down"
    snap = health.snapshot(101.0)
    assert snap.fps == pytest.approx(10.0) and snap.reconnects == 0 and snap.frames_dropped == 0
    health.on_frame(_result(40, 0.9 + GAP_S + 2.0), now=104.0)  # frames resume after an outage; 30 skipped
    summary.frames_processed += 1
    snap = health.snapshot(104.1)
    assert (snap.state, snap.reconnects, snap.frames_dropped) == ("up", 1, 30)
    health.on_end()
    assert health.state(104.1) == "ended" and health.record(104.1)["state"] == "ended"
    summary.error = SourceError("source 'rtsp://u:pw@cam' gone")
    record = health.record(104.1)
    assert record["state"] == "failed" and "pw" not in record["error"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape_until(port: int, proc: subprocess.Popen, found, timeout_s: float = 90.0):  # type: ignore[no-untyped-def]
    """Scrape ``--metrics`` (no token) until ``found(samples)``; the samples."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, _, samples = scrape(port, token=None)
            if status == 200 and found(samples):
                return samples
        except OSError:
            pass  # not listening yet
        assert proc.poll() is None, "the run ended before the metrics were seen"
        assert time.monotonic() < deadline, f"not seen within {timeout_s} s"
        time.sleep(0.2)


def _processed(samples: dict, name: str) -> float:
    return samples.get("emostream_frames_processed_total", {}).get((("source", name),), 0.0)


@pytest.mark.parametrize("fleet", [False, True], ids=["one-process", "fleet"])
def test_run_serves_metrics_of_every_source(tmp_path: Path, fleet: bool, request: pytest.FixtureRequest) -> None:
    # emostream run --metrics PORT: the same metrics as serve's, for a run in one process and for a
    # fleet's driver (which sees its cameras' records, not their frames).
    cams = tmp_path / "cams.yaml"
    cams.write_text("sources:\n" + "".join(f"  - {{name: {n}, path: '{CLIP}', paced: true}}\n" for n in ("a", "b")))
    port = _free_port()
    ray = ["--ray", request.getfixturevalue("ray_address")] if fleet else []
    stderr = tmp_path / "run.stderr"
    with running_cli(["run", "--sources", str(cams), *ray, "--metrics", str(port), "--max-seconds", "40",
                      "--out-dir", str(tmp_path / "out"), "--no-progress"], tmp_path, stderr) as proc:
        samples = _scrape_until(port, proc, lambda s: _processed(s, "a") >= 30 and _processed(s, "b") >= 30)
        assert samples["emostream_source_up"][(("source", "a"),)] == 1.0
        assert samples["emostream_faces_total"][(("source", "a"),)] >= 25  # a face in (nearly) every frame
        assert samples["emostream_frame_latency_seconds_count"][(("source", "b"),)] >= 30
        interrupt(proc, stderr, 90)
    text = stderr.read_text()
    assert f"metrics: http://127.0.0.1:{port}/metrics" in text and "Traceback" not in text
    with pytest.raises(OSError):  # closed with the run
        scrape(port, token=None)


def test_metrics_address_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "stream", "run", str(CLIP), "--metrics", f"127.0.0.1:{port}",
                               "--no-progress", "--out-dir", "out"], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"emostream: error: --metrics 127.0.0.1:{port}: cannot listen there: "
                                   "Address already in use"), proc.stderr
    assert not (tmp_path / "out").exists()  # refused before any work
