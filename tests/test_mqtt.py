"""MQTT publishing against a real Mosquitto broker (Debian ``mosquitto``, started here on a free port).

The broker runs as a subprocess with its own config file (loopback listener, anonymous,
no persistence); a paho client subscribes to everything and keeps what arrives. The
pipeline runs on the bundled clip. Skipped, with the reason, without ``mosquitto`` or
without the mqtt extra (paho-mqtt).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from stream.config import Config, MqttConfig, load_config
from stream.errors import ConfigError
from stream.records import Face, Frame, FrameResult
from stream.sinks.mqtt import MqttPublisher, parse_mqtt_url
from stream.summary import RunSummary

paho = pytest.importorskip("paho.mqtt.client", reason="the mqtt extra is not installed: pip install -e '.[mqtt]'")

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
needs_broker = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed "
                                  "(scripts/setup-system.sh --test: apt-get install mosquitto)")
CLIP = Path(__file__).resolve().parent.parent / "stream" / "assets" / "carphone_640x480.mp4"
LABELS = ("happy", "sad")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """One Mosquitto process on a fixed loopback port; ``kill`` and ``start`` again keep the port."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log = folder / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> Broker:
        assert MOSQUITTO is not None
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    pytest.fail(f"mosquitto ended at start: {self.log.read_text()}")
                threading.Event().wait(0.05)
        pytest.fail(f"mosquitto did not listen within {timeout_s} s: {self.log.read_text()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def url(self, prefix: str = "test") -> str:
        return f"mqtt://127.0.0.1:{self.port}/{prefix}"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path).start()
    try:
        yield b
    finally:
        b.kill()


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool
    t_s: float

    def json(self) -> dict:
        return json.loads(self.payload)


class Subscriber:
    """A paho client subscribed to ``#`` (again after each reconnect) that keeps every message."""

    def __init__(self, port: int) -> None:
        self.messages: list[Message] = []
        self.arrived = threading.Condition()
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe("#")
        self.client.on_subscribe = lambda c, u, mid, r, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the test subscriber could not subscribe"

    def _on_message(self, client: object, userdata: object, msg: paho.MQTTMessage) -> None:
        with self.arrived:
            self.messages.append(Message(msg.topic, msg.payload, bool(msg.retain), time.monotonic()))
            self.arrived.notify_all()

    def wait_for(self, found: Callable[[list[Message]], bool], timeout_s: float = 10.0) -> list[Message]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: found(self.messages), timeout_s), \
                f"not received within {timeout_s} s; got {[m.topic for m in self.messages][-30:]}"
            return list(self.messages)

    def on(self, topic: str) -> list[Message]:
        with self.arrived:
            return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber(broker: Broker) -> Iterator[Subscriber]:
    s = Subscriber(broker.port)
    try:
        yield s
    finally:
        s.close()


def result(index: int, faces: list[tuple[int, tuple[float, float]]], fps: float = 30.0) -> FrameResult:
    frame = Frame("clip.mp4", index, index / fps, time.perf_counter(), np.zeros((8, 8, 3), np.uint8))
    return FrameResult(frame, [Face(np.array([1.0, 2.0, 3.0, 4.0]), 0.9, np.array(p, np.float32), face_id)
                               for face_id, p in faces], time.perf_counter() + 0.01)


# -- The URL --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("mqtt://broker", {}, ("broker", 1883, "emostream", False, None, None)),
        ("mqtt://broker:1884/home/cams/", {}, ("broker", 1884, "home/cams", False, None, None)),
        ("mqtts://bob@broker/x", {"EMOSTREAM_MQTT_PASSWORD": "s3"}, ("broker", 8883, "x", True, "bob", "s3")),
        ("mqtt://bob@broker.lan/x", {"EMOSTREAM_PASSWORD_BROKER_LAN": "cam"}, ("broker.lan", 1883, "x", False,
                                                                              "bob", "cam")),
        ("mqtt://broker/x", {"EMOSTREAM_MQTT_PASSWORD": "unused"}, ("broker", 1883, "x", False, None, None)),
    ],
)
def test_url(url: str, env: dict[str, str], expected: tuple) -> None:
    t = parse_mqtt_url(url, env)
    assert (t.host, t.port, t.prefix, t.tls, t.username, t.password) == expected
    assert "s3" not in repr(t)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://broker/x", "expected mqtt://[user@]host[:port]/prefix"),
        ("mqtt://bob:secret@broker/x", "put the password in $EMOSTREAM_MQTT_PASSWORD"),
        ("mqtt://broker:99999/x", "the port must be a number"),
        ("mqtt:///x", "no broker host"),
        ("mqtt://broker/a/+/b", "may not hold '+', '#'"),
    ],
)
def test_bad_url_is_refused_naming_it(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        parse_mqtt_url(url, {})
    assert "secret" not in str(err.value)


def test_config_block_is_validated(tmp_path: Path) -> None:
    assert Config().mqtt == MqttConfig()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("mqtt:\n  url: mqtt://b/x\n  qos: 1\n  discovery: true\n")
    assert load_config(cfg).mqtt == MqttConfig(url="mqtt://b/x", qos=1, discovery=True)
    for text, message in [("mqtt:\n  qos: 2\n", "mqtt.qos: must be 0 or 1"),
                          ("mqtt:\n  url: http://b\n", "mqtt.url: expected mqtt://"),
                          ("mqtt:\n  queue_size: 0\n", "mqtt.queue_size: must be > 0"),
                          ("mqtt:\n  brokr: x\n", "mqtt.brokr")]:
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(cfg)


# -- No broker: nothing waits, drops are counted ---------------------------------------------------

def test_without_a_broker_nothing_waits_and_drops_are_counted() -> None:
    config = MqttConfig(url=f"mqtt://127.0.0.1:{free_port()}/t", min_interval_s=0.0, queue_size=8)
    publisher = MqttPublisher(config, LABELS).start()
    summary = RunSummary(source="clip.mp4", name="clip")
    publisher.on_start([summary])
    slowest = 0.0
    for i in range(600):  # a face appears and goes every frame: each frame is a change to publish
        r = result(i, [(i, (0.8, 0.2))] if i % 2 else [])
        t0 = time.perf_counter()
        publisher.on_result(r, summary)
        slowest = max(slowest, time.perf_counter() - t0)
    t0 = time.perf_counter()
    publisher.close(timeout_s=1.0)
    assert time.perf_counter() - t0 < 5.0
    assert not publisher.connected and publisher.published == 0
    assert publisher.dropped > 500  # the outbox holds 8; the rest were counted, not queued
    assert slowest < 0.05, f"on_result took {slowest * 1000:.1f} ms"


# -- A real broker -----------------------------------------------------------------------------------

@needs_broker
def test_faces_episodes_health_and_discovery(broker: Broker, subscriber: Subscriber) -> None:
    config = MqttConfig(url=broker.url("t"), min_interval_s=0.0, health_interval_s=60.0, discovery=True)
    publisher = MqttPublisher(config, LABELS, uncertain_below=0.0).start()
    summary = RunSummary(source="rtsp://u:pw@cam/x", source_id=0, name="cam 1")
    publisher.on_start([summary])
    subscriber.wait_for(lambda ms: any(m.topic == "t/status" and m.payload == b"online" for m in ms))
    # happy for 1 s, then sad for 0.67 s, then the face is gone for 1.3 s (> max_gap_s 1.0). After each
    # change, wait for its message: a newer state of a retained topic would replace one still waiting.
    for first, end in [(0, 30), (30, 50), (50, 90)]:
        for i in range(first, end):
            faces = [(7, (0.8, 0.2) if i < 30 else (0.1, 0.9))] if i < 50 else []
            summary.frames_processed += 1
            publisher.on_result(result(i, faces), summary)
        subscriber.wait_for(lambda ms, first=first: any(m.topic == "t/cam_1/faces" and m.json()["frame"] == first
                                                        for m in ms))
    subscriber.wait_for(lambda ms: sum(m.topic == "t/cam_1/episode" for m in ms) >= 4)
    episodes = [m.json() for m in subscriber.on("t/cam_1/episode")]
    assert [(e["event"], e["label"]) for e in episodes] == [("start", "happy"), ("end", "happy"),
                                                            ("start", "sad"), ("end", "sad")]
    assert episodes[0] == {"event": "start", "source": "clip.mp4", "track_id": 7, "label": "happy",
                           "start_frame": 0, "start_s": 0.0}
    assert episodes[1]["start_frame"] == 0 and episodes[1]["end_frame"] == 29 and episodes[1]["end_s"] == 1.0
    assert episodes[3]["start_frame"] == 30 and episodes[3]["end_frame"] == 49 and episodes[3]["frames"] == 20
    assert set(episodes[3]) == {"event", "source", "track_id", "label", "start_frame", "end_frame", "start_s",
                                "end_s", "duration_s", "frames", "mean_confidence", "peak_confidence", "peak_frame"}
    faces = [m.json() for m in subscriber.on("t/cam_1/faces")]
    assert [(f["frame"], f["count"], f["dominant"]) for f in faces] == [(0, 1, "happy"), (30, 1, "sad"),
                                                                        (50, 0, None)]
    assert faces[1]["faces"][0] == {"id": 7, "box_xyxy": [1.0, 2.0, 3.0, 4.0], "score": 0.9, "label": "sad",
                                    "probs": {"happy": 0.1, "sad": 0.9}, "keypoints_xy": []}
    # The face's own topic is published beside the faces topic: wait for its third message (emptied).
    subscriber.wait_for(lambda ms: sum(m.topic == "t/cam_1/face/7" for m in ms) >= 3)
    face = [m.payload for m in subscriber.on("t/cam_1/face/7")]
    assert [json.loads(p)["label"] for p in face[:2]] == ["happy", "sad"] and face[2] == b""  # emptied: gone
    publisher.on_source_end(summary)
    publisher.close()
    subscriber.wait_for(lambda ms: ms[-1].topic == "t/status" and ms[-1].payload == b"offline")
    health = subscriber.on("t/cam_1/health")[-1].json()
    assert health["state"] == "ended" and health["frames_processed"] == 90 and health["mqtt_dropped"] == 0
    assert subscriber.on("t/cam_1/availability")[-1].payload == b"offline"
    discovery = {m.topic: m.json() for m in subscriber.messages if m.topic.startswith("homeassistant/")}
    sensor = discovery["homeassistant/sensor/emostream_t_cam_1/emotion/config"]
    assert sensor["state_topic"] == "t/cam_1/faces" and sensor["unique_id"] == "emostream_t_cam_1_emotion"
    assert {a["topic"] for a in sensor["availability"]} == {"t/status", "t/cam_1/availability"}
    assert "homeassistant/sensor/emostream_t_cam_1/faces/config" in discovery
    assert "pw" not in json.dumps(discovery) + json.dumps(health)

    # What a client that connects later sees: the retained state.
    late = Subscriber(broker.port)
    try:
        retained = {m.topic: m for m in late.wait_for(
            lambda ms: {"t/status", "t/cam_1/health", "t/cam_1/faces"} <= {m.topic for m in ms})}
    finally:
        late.close()
    assert all(m.retain for m in retained.values())
    assert retained["t/status"].payload == b"offline" and retained["t/cam_1/health"].json()["state"] == "ended"
    assert "t/cam_1/face/7" not in retained and "t/cam_1/episode" not in retained


class Timed:
    """Wraps a sink: how long each call took, and when each frame was seen."""

    def __init__(self, inner: MqttPublisher, at_frame: dict[int, threading.Event]) -> None:
        self.inner = inner
        self.wants_images = False
        self.calls_s: list[float] = []
        self.frame_times: list[float] = []
        self.at_frame = at_frame

    def on_start(self, summaries: list[RunSummary]) -> None:
        self.inner.on_start(summaries)

    def on_result(self, r: FrameResult, summary: RunSummary) -> None:
        t0 = time.perf_counter()
        self.inner.on_result(r, summary)
        self.calls_s.append(time.perf_counter() - t0)
        self.frame_times.append(time.monotonic())
        event = self.at_frame.get(len(self.frame_times))
        if event is not None:
            event.set()

    def on_source_end(self, summary: RunSummary) -> None:
        self.inner.on_source_end(summary)


@needs_broker
def test_pipeline_on_the_clip_publishes_the_event_log_records(broker: Broker, subscriber: Subscriber,
                                                              tmp_path: Path) -> None:
    from stream.pipeline import Pipeline, RunOptions, SourceSpec

    config = Config().with_overrides({"output.dir": tmp_path, "output.progress": False, "output.video": False,
                                      "mqtt.url": broker.url("cams"), "mqtt.min_interval_s": 0.0})
    models = _models(config)
    publisher = MqttPublisher(config.mqtt, models.classifier.labels, episodes=config.episodes).start()
    try:
        spec = SourceSpec(str(CLIP), name="car", events=tmp_path / "car.events.jsonl")
        summaries = Pipeline([spec], config, RunOptions(display=False, max_frames=60), models,
                             sinks=[publisher]).run()
    finally:
        publisher.close()
    assert summaries[0].frames_processed == 60
    subscriber.wait_for(lambda ms: any(m.topic == "cams/status" and m.payload == b"offline" for m in ms))
    log = {r["frame"]: r for r in map(json.loads, (tmp_path / "car.events.jsonl").read_text().splitlines())}
    faces = [m.json() for m in subscriber.on("cams/car/faces")]
    assert faces and faces[0]["frame"] == 0 and faces[0]["count"] == 1
    for record in faces:  # the event log's record of that frame, plus count and dominant
        count, dominant = record.pop("count"), record.pop("dominant")
        assert record == log[record["frame"]]
        assert count == len(record["faces"])
        assert dominant == (record["faces"][0]["label"] if record["faces"] else None)
    track = faces[0]["faces"][0]["id"]
    face = subscriber.on(f"cams/car/face/{track}")[0].json()
    assert face == {"source": faces[0]["source"], "frame": 0, "t": 0.0, **faces[0]["faces"][0]}
    episodes = [m.json() for m in subscriber.on("cams/car/episode")]
    assert [e["event"] for e in episodes] == ["start", "end"] * (len(episodes) // 2) and episodes
    for start, end in zip(episodes[::2], episodes[1::2], strict=True):  # each start is ended, by the end
        assert (start["track_id"], start["label"], start["start_frame"]) == (end["track_id"], end["label"],
                                                                             end["start_frame"])
        assert end["end_frame"] <= 59 and end["duration_s"] >= config.episodes.min_duration_s
    assert episodes[0]["track_id"] == track
    health = subscriber.on("cams/car/health")
    assert health[0].json()["state"] in ("starting", "up") and health[-1].json()["state"] == "ended"
    assert health[-1].json()["frames_processed"] == 60
    assert publisher.dropped == 0 and publisher.published == len(
        [m for m in subscriber.messages if m.topic.startswith("cams/")])


_MODELS: dict[str, object] = {}


def _models(config: Config):  # type: ignore[no-untyped-def]
    from stream.pipeline import load_models

    if "m" not in _MODELS:
        _MODELS["m"] = load_models(config)
    return _MODELS["m"]


@needs_broker
def test_broker_killed_and_restarted_mid_run(broker: Broker, subscriber: Subscriber, tmp_path: Path) -> None:
    """A paced (live) clip for ~10 s; the broker is killed at frame 60 and restarted 60 frames later."""
    from stream.pipeline import Pipeline, RunOptions, SourceSpec

    config = Config().with_overrides({"output.dir": tmp_path, "output.progress": False, "output.video": False,
                                      "output.events": False, "mqtt.url": broker.url("live"),
                                      "mqtt.health_interval_s": 0.25, "mqtt.min_interval_s": 0.0})
    models = _models(config)
    publisher = MqttPublisher(config.mqtt, models.classifier.labels, episodes=config.episodes).start()
    kill_at, restart_at = threading.Event(), threading.Event()
    timed = Timed(publisher, {60: kill_at, 120: restart_at})
    interrupt = threading.Event()
    marks: dict[str, float] = {}

    def operate() -> None:
        if kill_at.wait(30):
            broker.kill()
            marks["killed"] = time.monotonic()
            if restart_at.wait(30):
                broker.start()
                marks["restarted"] = time.monotonic()

    operator = threading.Thread(target=operate, daemon=True)
    operator.start()
    subscriber.wait_for(lambda ms: any(m.topic == "live/status" for m in ms), 20)  # the publisher is connected
    try:
        spec = SourceSpec(str(CLIP), name="cam", paced=True)
        summaries = Pipeline([spec], config, RunOptions(display=False, max_seconds=10.0, interrupt=interrupt),
                             models, sinks=[timed]).run()
    finally:
        operator.join(30)
        publisher.close()
    assert "restarted" in marks, "the broker was not restarted during the run"
    assert publisher.connects >= 2, "the publisher did not reconnect"
    # Publishing resumed: health sent after the restart counts frames processed after it.
    after = subscriber.wait_for(lambda ms: any(m.topic == "live/cam/health" and m.t_s > marks["restarted"]
                                               and m.json()["state"] == "up" for m in ms), 15)
    resumed = [m.json() for m in after if m.topic == "live/cam/health" and m.t_s > marks["restarted"]]
    frames_at_restart = sum(t <= marks["restarted"] for t in timed.frame_times)
    assert max(h["frames_processed"] for h in resumed) > frames_at_restart
    retained = [m for m in after if m.t_s > marks["restarted"] and m.topic == "live/cam/availability"]
    assert retained, "the retained availability was not sent again to the restarted broker"
    # The pipeline was not slowed: as many frames per second while the broker was down as before,
    # and no sink call took long.
    times = np.array(timed.frame_times)
    before = np.sum(times < marks["killed"]) / (marks["killed"] - times[0])
    down = np.sum((times >= marks["killed"]) & (times < marks["restarted"])) / (marks["restarted"] - marks["killed"])
    assert down >= 0.8 * before, f"{down:.1f} frames/s while the broker was down, {before:.1f} before"
    assert max(timed.calls_s) < 0.05, f"slowest on_result {max(timed.calls_s) * 1000:.1f} ms"
    assert summaries[0].frames_processed == len(timed.frame_times) > 150


# -- The commands ----------------------------------------------------------------------------------

def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stream", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=180, env={**os.environ, **(env or {})})


@needs_broker
def test_run_with_mqtt_flag(broker: Broker, subscriber: Subscriber, tmp_path: Path) -> None:
    proc = _cli("run", str(CLIP), "--max-frames", "60", "--no-display", "--no-progress", "--out-dir", "out",
                "--mqtt", broker.url("home/emo"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    subscriber.wait_for(lambda ms: any(m.topic == "home/emo/status" and m.payload == b"offline" for m in ms))
    topics = {m.topic for m in subscriber.messages}
    assert {"home/emo/status", "home/emo/carphone_640x480/faces", "home/emo/carphone_640x480/face/0",
            "home/emo/carphone_640x480/health", "home/emo/carphone_640x480/availability",
            "home/emo/carphone_640x480/episode"} <= topics
    health = subscriber.on("home/emo/carphone_640x480/health")[-1].json()
    assert health["state"] == "ended" and health["frames_processed"] == 60 and health["mqtt_dropped"] == 0


@needs_broker
def test_serve_with_mqtt_flag_and_discovery(broker: Broker, subscriber: Subscriber, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("mqtt:\n  discovery: true\n  health_interval_s: 0.5\n")
    proc = subprocess.Popen([sys.executable, "-m", "stream", "serve", str(CLIP), "--port", "0", "--out-dir", "out",
                             "--config", "c.yaml", "--mqtt", broker.url("dash")], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if k != "EMOSTREAM_TOKEN"})
    try:
        subscriber.wait_for(lambda ms: sum(m.topic == "dash/carphone_640x480/health" and m.json()["state"] == "up"
                                           for m in ms) >= 2, 60)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    subscriber.wait_for(lambda ms: any(m.topic == "dash/status" and m.payload == b"offline" for m in ms))
    assert "homeassistant/sensor/emostream_dash_carphone_640x480/emotion/config" in {m.topic
                                                                                   for m in subscriber.messages}
    assert subscriber.on("dash/carphone_640x480/health")[-1].json()["state"] == "ended"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [("http://broker/x", "expected mqtt://[user@]host[:port]/prefix"),
     ("mqtt://u:secret@broker/x", "put the password in $EMOSTREAM_MQTT_PASSWORD")],
)
def test_bad_mqtt_url_is_one_line_exit_2(url: str, fragment: str, tmp_path: Path) -> None:
    proc = _cli("run", str(CLIP), "--max-frames", "1", "--no-display", "--mqtt", url, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr and "secret" not in proc.stderr


@needs_broker
def test_a_fleet_publishes_every_camera_from_its_driver(broker: Broker, subscriber: Subscriber, tmp_path: Path,
                                                        ray_address: str) -> None:
    # --mqtt with --ray: the driver publishes each camera's faces, episodes and health from the records
    # its actors send, as one process does from its frames; every written frame is counted once.
    cams, out = tmp_path / "cams.yaml", tmp_path / "out"
    cams.write_text("sources:\n" + "".join(f"  - {{name: {n}, path: '{CLIP}', paced: true}}\n" for n in ("a", "b")))
    proc = _cli("run", "--sources", str(cams), "--ray", ray_address, "--max-seconds", "12", "--out-dir", str(out),
                "--no-progress", "--mqtt", broker.url("fleet"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    subscriber.wait_for(lambda ms: any(m.topic == "fleet/status" and m.payload == b"offline" for m in ms))
    for name in ("a", "b"):
        logged = [json.loads(line) for line in (out / f"{name}.events.jsonl").read_text().splitlines()]
        assert len(logged) > 30
        assert {f"fleet/{name}/faces", f"fleet/{name}/health", f"fleet/{name}/availability",
                f"fleet/{name}/face/0"} <= {m.topic for m in subscriber.messages}
        health = subscriber.on(f"fleet/{name}/health")[-1].json()
        assert health["state"] == "ended" and health["frames_processed"] == len(logged), health
        assert health["mqtt_dropped"] == 0
        faces = subscriber.on(f"fleet/{name}/faces")
        assert faces and faces[-1].json()["frame"] <= logged[-1]["frame"]
