"""Fleet soak: ``emostream serve`` on 8 paced RTSP cameras with MQTT on; cameras killed and restored at random,
two added and one removed through the HTTP API, the broker restarted once (issue 17 item 6).

Starts, on this machine:

- one GStreamer RTSP camera per source (``tests/rtsp_server.py`` under the system Python; by default the
  bundled carphone clip, one face in every frame, scaled to 320x240 and sent at 15 frames/s, mounts
  ``/cam0`` ... so the sources are named ``cam0`` ...): ``--cameras`` at the start and two more that
  join later;
- a Mosquitto broker on a free loopback port and a paho subscriber to ``<prefix>/#`` that counts what
  arrives (deliveries of retained messages on subscribing are not counted);
- ``emostream serve CAM... --port 0 --out-dir out --mqtt mqtt://127.0.0.1:PORT/soak`` (event logs on, no
  annotated video, ``capture.reconnect_budget_s`` well above the longest outage).

Meanwhile, on a schedule drawn from ``--seed``:

- ``--outages`` times a camera that is up is SIGKILLed for ``--outage-min``..``--outage-max`` seconds and
  started again on the same port (the pipeline reconnects);
- at 30 % and 45 % of the run a camera is added (``POST /api/sources``), at 60 % one of the first cameras
  is removed (``DELETE /api/sources/ID``);
- at 50 % the broker is SIGKILLed for ``--broker-down`` seconds and started again on the same port;
- every ``--sample-every`` seconds: the server's RSS (``VmRSS``), the new lines of every event log,
  ``GET /api/sources`` and ``/metrics`` (as a dashboard user and a Prometheus scrape would), and once a
  minute one ``/frame/ID.jpg``.

At the end: ``/metrics`` once more, Ctrl-C (SIGINT; ``serve`` documents exit 130), and the event logs read
to their end. The report:

- per window: RSS, capture-to-result latency p50/p95 over all sources, frames processed, cameras down;
- **memory growth**: RSS at the end minus RSS ``--warmup`` seconds after the first frame, and the same from
  the last add/remove on (adding a source legitimately costs memory);
- **p95 drift**: last window's p95 over the first window's after the warm-up;
- **frames lost**, per source: the frame index counts every frame captured (processed or dropped), so the
  indices a log skips are the frames the pipeline dropped to stay live (compared with
  ``emostream_frames_dropped_total``). A log's records are cut into segments at each record with
  ``gap_s`` (the first frame after an outage); within a segment the camera sent
  ``(t_last - t_first) * fps + 1`` frames and ``f_last - f_first + 1`` were captured: the difference is
  lost without an outage to explain it (a frame or two per segment is arrival-time jitter, more when
  a stretch ends with the reader behind); the frames the readers skipped as stale are taken off it. By
  the cameras' own frame stamps (read in serve's process by ``benchmarks/serve_counting.py``): the frames
  each camera sent while connected, and those the reader never returned (stale skips among them);
- **MQTT**: the publisher's own count (``mqtt_published`` of the latest health message received) against the
  messages the subscriber had received by then, plus ``mqtt_dropped``;
- every log's frame indices strictly increasing; the added sources' logs and the removed one's final log.

    .venv/bin/python benchmarks/soak_fleet.py --seconds 3600 --json /tmp/soak_fleet.json

A benchmark: numbers depend on what else runs on the machine (the load average is reported).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO, REPO / "benchmarks"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from soak import CARPHONE, read_rss_mb  # noqa: E402

from stream.render.outputs import partial_path  # noqa: E402
from tests.rtsp_fixtures import RtspServer, gstreamer_missing  # noqa: E402

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
PREFIX = "soak"


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
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> Broker:
        assert MOSQUITTO is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:  # the port can be briefly busy after a kill
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return self
                except OSError:
                    time.sleep(0.05)
            time.sleep(0.5)
        raise RuntimeError(f"mosquitto did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Subscriber:
    """A paho client on ``<prefix>/#`` (again after each reconnect) that counts what arrives."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as paho

        self.lock = threading.Lock()
        self.received = 0  # live deliveries (not the retained store sent on subscribing)
        self.retained_deliveries = 0
        self.by_kind: dict[str, int] = {}
        #: The latest health payload's ``mqtt_published`` and what had been received before it arrived.
        self.published_seen = 0
        self.received_at_published = 0
        self.dropped_seen = 0
        self.connects = 0
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda c, u, mid, r, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.subscribed.wait(20):
            raise RuntimeError("the soak's MQTT subscriber could not subscribe")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connects += 1
        client.subscribe(f"{PREFIX}/#")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self.lock:
            if msg.retain:
                self.retained_deliveries += 1
                return
            levels = msg.topic.split("/")
            kind = levels[2] if len(levels) > 2 else levels[-1]
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
            if kind == "health":
                try:
                    record = json.loads(msg.payload)
                except ValueError:
                    record = {}
                # Sent before this message: those already handed to paho and those queued ahead of it.
                published = int(record.get("mqtt_published", 0)) + int(record.get("mqtt_pending", 0))
                if published >= self.published_seen:
                    self.published_seen = published
                    self.received_at_published = self.received
                    self.dropped_seen = int(record.get("mqtt_dropped", 0))
            self.received += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class LogTail:
    """Reads what ``serve`` appends to one source's event log (partial name, then final)."""

    def __init__(self, final: Path) -> None:
        self.paths = (partial_path(final), final)
        self._file: IO[str] | None = None
        self._rest = ""
        self.offset_s = math.inf  # soak clock minus the record's t (smallest seen)
        #: ``(frame, t_s, latency_ms, gap_s, read_time_s)`` per record.
        self.rows: list[tuple[int, float, float, float, float]] = []
        self.faces = 0

    def poll(self, now_s: float) -> None:
        if self._file is None:
            for path in self.paths:
                try:
                    self._file = open(path, encoding="utf-8")  # noqa: SIM115 - closed by close()
                    break
                except FileNotFoundError:
                    continue
            else:
                return
        text = self._rest + self._file.read()
        *lines, self._rest = text.split("\n")
        for line in lines:
            if not line.strip():
                continue
            r = json.loads(line)
            t = float(r["t"])
            self.offset_s = min(self.offset_s, now_s - t)
            self.rows.append((int(r["frame"]), t, float(r["latency_ms"]), float(r.get("gap_s", 0.0)), now_s))
            self.faces += len(r["faces"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class SourceFigures:
    """One source's event log, accounted for."""

    name: str
    added_s: float | None
    removed_s: float | None
    outages_scheduled: int
    records: int
    faces: int
    increasing: bool
    captured: int
    skipped: int
    dropped_metric: int | None
    processed_metric: int | None
    gaps_logged: int
    gap_s_total: float
    span_s: float
    expected: int
    stale_skipped: int | None
    lost_unexplained: int
    final_log: bool
    #: From the cameras' frame stamps (``benchmarks/serve_counting.py``): sent while connected, never returned.
    sent_by_seq: int | None = None
    seq_missing: int | None = None
    send_span_s: float | None = None
    unstamped: int | None = None


@dataclass
class Window:
    t_start_s: float
    t_end_s: float
    rss_mb: float
    frames: int
    latency_p50_ms: float
    latency_p95_ms: float
    cameras_down: int


@dataclass
class FleetReport:
    seconds: float
    cameras: int
    fps: float
    size: str
    seed: int
    window_s: float
    warmup_s: float
    source: str = ""
    exit_code: int | None = None
    actions: list[tuple[float, str]] = field(default_factory=list)
    outages: list[tuple[str, float, float]] = field(default_factory=list)
    broker_down: tuple[float, float] | None = None
    t_first_frame_s: float = math.nan
    rss_warm_mb: float = math.nan
    rss_after_changes_mb: float = math.nan
    rss_end_mb: float = math.nan
    rss_max_mb: float = math.nan
    memory_growth_mb: float = math.nan
    memory_growth_after_changes_mb: float = math.nan
    latency_p95_first_ms: float = math.nan
    latency_p95_last_ms: float = math.nan
    latency_drift: float = math.nan
    frames_processed: int = 0
    frames_skipped: int = 0
    frames_stale_skipped: int = 0
    frames_lost_unexplained: int = 0
    frames_expected: int = 0
    mqtt_published: int = 0
    mqtt_received_by_then: int = 0
    mqtt_received_total: int = 0
    mqtt_dropped: int = 0
    mqtt_by_kind: dict[str, int] = field(default_factory=dict)
    subscriber_connects: int = 0
    api_errors: list[str] = field(default_factory=list)
    sources: list[SourceFigures] = field(default_factory=list)
    windows: list[Window] = field(default_factory=list)
    rss_samples: list[tuple[float, float]] = field(default_factory=list)
    load_average: list[float] = field(default_factory=list)
    load_samples: list[tuple[float, float]] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    machine: str = ""
    command: str = ""


def _request(url: str, method: str = "GET", body: Any = None, timeout: float = 30.0) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError as err:
        return 0, str(err).encode()


def parse_metrics(text: str, name: str) -> dict[str, float]:
    """``{source: value}`` of one metric (no other labels) in a Prometheus text scrape."""
    found = {}
    for m in re.finditer(rf'^{name}{{source="([^"]*)"}} (\S+)$', text, re.M):
        found[m[1]] = float(m[2])
    return found


def schedule(seconds: float, cameras: int, outages: int, outage_min: float, outage_max: float, window_s: float,
             seed: int) -> tuple[list[tuple[float, str, Any]], str]:
    """The soak's actions ``(t_s, what, arg)``, sorted, and the name of the camera to remove."""
    rng = random.Random(seed)
    added = {f"cam{cameras}": 0.30 * seconds, f"cam{cameras + 1}": 0.45 * seconds}
    removed = f"cam{rng.randrange(cameras)}"
    removed_s = 0.60 * seconds
    actions: list[tuple[float, str, Any]] = [(t, "add", name) for name, t in added.items()]
    actions.append((removed_s, "remove", removed))
    broker_s = 0.50 * seconds
    actions.append((broker_s, "broker", None))
    # Outages between 5 % of the run and the last window (kept clean: the drift's reference).
    lo, hi = 0.05 * seconds, seconds - window_s - outage_max - 20.0
    busy: dict[str, list[tuple[float, float]]] = {}
    for t in sorted(rng.uniform(lo, hi) for _ in range(outages)):
        duration = rng.uniform(outage_min, outage_max)
        names = [f"cam{i}" for i in range(cameras)] + [n for n, ta in added.items() if ta + 15 < t]
        names = [n for n in names if not (n == removed and t + duration + 15 > removed_s)]
        names = [n for n in names if all(t > b + 15 or t + duration + 15 < a for a, b in busy.get(n, []))]
        if not names:
            continue
        name = rng.choice(names)
        busy.setdefault(name, []).append((t, t + duration))
        actions.append((t, "kill", (name, duration)))
    return sorted(actions, key=lambda a: a[0]), removed


def soak_fleet(seconds: float, *, cameras: int = 8, outages: int = 30, outage_min: float = 5.0,
               outage_max: float = 30.0, broker_down_s: float = 10.0, window_s: float = 60.0,
               warmup_s: float = 300.0, sample_every: float = 5.0, size: str = "320x240", fps: float = 15.0,
               clip: Path = CARPHONE, seed: int = 17, keep: Path | None = None,
               log: IO[str] | None = None) -> FleetReport:
    """Run the fleet soak (see the module docstring) and return its report.

    Args:
        seconds: How long ``serve`` runs before the Ctrl-C.
        cameras: Cameras at the start (two more are added, one removed).
        outages: Camera kills drawn over the run.
        outage_min: Shortest outage (s).
        outage_max: Longest outage (s).
        broker_down_s: How long the broker stays down.
        window_s: Report window (s).
        warmup_s: Memory growth and the drift's first window count from this long after the first frame.
        sample_every: Seconds between samples.
        size: Stream ``WIDTHxHEIGHT``.
        fps: Stream frame rate.
        clip: Video file the cameras loop.
        seed: Seed of the schedule.
        keep: Copy the outputs (event logs, serve's stderr, the broker's log) here.
        log: Where to print progress, or None.

    Raises:
        RuntimeError: GStreamer's RTSP server or Mosquitto is missing, or something does not start.
    """
    missing = gstreamer_missing()
    if missing:
        raise RuntimeError(missing)
    if MOSQUITTO is None:
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    report = FleetReport(seconds, cameras, fps, size, seed, window_s, warmup_s,
                         source=f"clip {clip.name} {size} at {fps:g} fps, RTSP/TCP")
    actions, _removed_name = schedule(seconds, cameras, outages, outage_min, outage_max, window_s, seed)
    load_start = os.getloadavg()
    names = [f"cam{i}" for i in range(cameras + 2)]
    servers = {n: RtspServer(path=f"/{n}", args=("--clip", str(clip), "--size", size, "--fps", f"{fps:g}"))
               for n in names}
    ids: dict[str, int] = {}
    added_s: dict[str, float] = {}
    removed_s: dict[str, float] = {}
    down: dict[str, float] = {}  # name -> restore time
    rss: list[tuple[float, float]] = []
    metrics_text = ""
    with tempfile.TemporaryDirectory(prefix="emostream-soak-fleet-") as tmp:
        work = Path(tmp)
        out = work / "out"
        out.mkdir()
        (work / "soak.yaml").write_text(
            f"capture:\n  reconnect_budget_s: {outage_max + 300:g}\n"
            "output:\n  video: false\n  progress: false\n")
        tails = {n: LogTail(out / f"{n}.events.jsonl") for n in names}
        broker = Broker(work)
        subscriber: Subscriber | None = None
        proc: subprocess.Popen[bytes] | None = None
        stderr_path = work / "serve.stderr"
        counts_path = work / "capture_counts.json"
        stderr = stderr_path.open("w")
        t0 = time.monotonic()
        try:
            for server in servers.values():
                server.start()
            broker.start()
            subscriber = Subscriber(broker.port)
            cmd = [sys.executable, str(REPO / "benchmarks" / "serve_counting.py"), "serve",
                   *(servers[f"cam{i}"].url for i in range(cameras)),
                   "--port", "0", "--out-dir", str(out), "--config", str(work / "soak.yaml"),
                   "--mqtt", f"mqtt://127.0.0.1:{broker.port}/{PREFIX}"]
            env = {k: v for k, v in os.environ.items() if k != "EMOSTREAM_TOKEN"}
            env["PYTHONPATH"] = str(REPO)
            env["EMOSTREAM_SOAK_COUNTS"] = str(counts_path)
            proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
            port = 0
            while not port:
                found = re.search(r"dashboard on http://\S+:(\d+)/", stderr_path.read_text())
                if found:
                    port = int(found[1])
                elif proc.poll() is not None or time.monotonic() - t0 > 180:
                    raise RuntimeError(f"serve did not start: {stderr_path.read_text()[-3000:]}")
                else:
                    time.sleep(0.2)
            base = f"http://127.0.0.1:{port}"
            for i in range(cameras):
                ids[f"cam{i}"] = i
            # The schedule runs on the serve's clock: from now.
            t0 = time.monotonic()
            if log:
                print(f"serve on {base}, pid {proc.pid}; broker on {broker.port}", file=log, flush=True)
            pending = list(actions)
            broker_restart_at: float | None = None
            next_sample = 0.0
            next_frame_fetch = 60.0
            while True:
                now = time.monotonic() - t0
                if proc.poll() is not None:
                    report.api_errors.append(f"serve ended early at {now:.0f} s (exit {proc.returncode})")
                    break
                if now >= seconds:
                    break
                while pending and pending[0][0] <= now:
                    _, what, arg = pending.pop(0)
                    if what == "kill":
                        name, duration = arg
                        if name in removed_s or name in down:
                            continue
                        servers[name].kill()
                        down[name] = now + duration
                        report.outages.append((name, round(now, 1), math.nan))
                        report.actions.append((round(now, 1), f"killed {name} for {duration:.0f} s"))
                    elif what == "add":
                        code, body = _request(base + "/api/sources", "POST",
                                              {"source": servers[arg].url, "name": arg})
                        if code == 201:
                            ids[arg] = int(json.loads(body)["id"])
                            added_s[arg] = round(now, 1)
                            report.actions.append((round(now, 1), f"added {arg} (id {ids[arg]})"))
                        else:
                            report.api_errors.append(f"POST {arg}: {code} {body[:200]!r}")
                    elif what == "remove":
                        code, body = _request(f"{base}/api/sources/{ids[arg]}", "DELETE")
                        if code == 200:
                            removed_s[arg] = round(now, 1)
                            report.actions.append((round(now, 1), f"removed {arg}"))
                        else:
                            report.api_errors.append(f"DELETE {arg}: {code} {body[:200]!r}")
                    elif what == "broker":
                        broker.kill()
                        broker_restart_at = now + broker_down_s
                        report.broker_down = (round(now, 1), math.nan)
                        report.actions.append((round(now, 1), f"killed the broker for {broker_down_s:g} s"))
                for name, until in list(down.items()):
                    if now >= until:
                        servers[name].start()
                        del down[name]
                        for k, (n, a, b) in enumerate(report.outages):
                            if n == name and math.isnan(b):
                                report.outages[k] = (n, a, round(time.monotonic() - t0, 1))
                        report.actions.append((round(now, 1), f"restored {name}"))
                if broker_restart_at is not None and now >= broker_restart_at:
                    broker.start()
                    assert report.broker_down is not None
                    report.broker_down = (report.broker_down[0], round(time.monotonic() - t0, 1))
                    report.actions.append((round(now, 1), "restarted the broker"))
                    broker_restart_at = None
                if now >= next_sample:
                    next_sample += sample_every
                    mb = read_rss_mb(proc.pid)
                    if mb is not None:
                        rss.append((round(now, 1), round(mb, 1)))
                    report.load_samples.append((round(now, 1), round(os.getloadavg()[0], 2)))
                    for tail in tails.values():
                        tail.poll(now)
                    code, _ = _request(base + "/api/sources")
                    if code != 200:
                        report.api_errors.append(f"GET /api/sources at {now:.0f} s: {code}")
                    code, body = _request(base + "/metrics")
                    if code == 200:
                        metrics_text = body.decode()
                    if now >= next_frame_fetch:
                        next_frame_fetch += 60.0
                        _request(f"{base}/frame/0.jpg")
                    if log:
                        frames = sum(len(t.rows) for t in tails.values())
                        print(f"[{now:7.1f} s] rss {mb or math.nan:6.1f} MB, {frames} records, "
                              f"mqtt {subscriber.received}, load {os.getloadavg()[0]:.1f}"
                              f"{', down: ' + ' '.join(sorted(down)) if down else ''}"
                              f"{', broker down' if broker_restart_at is not None else ''}", file=log, flush=True)
                time.sleep(0.2)
            for name in list(down):  # an outage still on at the end (none is drawn there)
                servers[name].start()
            code, body = _request(base + "/metrics")
            if code == 200:
                metrics_text = body.decode()
            end_s = time.monotonic() - t0
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=180)
                except subprocess.TimeoutExpired:
                    report.api_errors.append("serve did not end within 180 s of Ctrl-C")
            time.sleep(2.0)  # the last MQTT messages
            for tail in tails.values():
                tail.poll(end_s)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            for tail in tails.values():
                tail.close()
            if subscriber is not None:
                subscriber.close()
            broker.kill()
            for server in servers.values():
                server.close()
            stderr.close()
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copytree(out, keep / "out", dirs_exist_ok=True)
                for f in (stderr_path, broker.log):
                    if f.exists():
                        shutil.copy(f, keep / f.name)
        report.exit_code = proc.returncode if proc is not None else None
        report.stderr_tail = [line for line in stderr_path.read_text().splitlines() if line.strip()][-30:] \
            if stderr_path.exists() else []
        counts = json.loads(counts_path.read_text()) if counts_path.exists() else {}
        stale = {name.rsplit("/", 1)[-1]: c["stale_skipped"] for name, c in counts.items()}
        stamps = {name.rsplit("/", 1)[-1]: c for name, c in counts.items()}
        final_logs = {n: (out / f"{n}.events.jsonl").is_file() and not partial_path(out / f"{n}.events.jsonl").exists()
                      for n in names}
    report.wall_s = round(end_s, 1)
    report.load_average = [round(a, 2) for a in (*load_start, *os.getloadavg())]
    if subscriber is not None:
        report.mqtt_published = subscriber.published_seen
        report.mqtt_received_by_then = subscriber.received_at_published
        report.mqtt_received_total = subscriber.received
        report.mqtt_dropped = subscriber.dropped_seen
        report.mqtt_by_kind = dict(sorted(subscriber.by_kind.items()))
        report.subscriber_connects = subscriber.connects
    processed = parse_metrics(metrics_text, "emostream_frames_processed_total")
    dropped = parse_metrics(metrics_text, "emostream_frames_dropped_total")
    outages_of = {n: sum(1 for o in report.outages if o[0] == n) for n in names}
    for n in names:
        if n not in ids:
            continue
        figures = account(n, tails[n], fps, added_s.get(n), removed_s.get(n), outages_of[n],
                          dropped.get(n), processed.get(n), final_logs[n], stale.get(n))
        c = stamps.get(n, {})
        figures.sent_by_seq, figures.seq_missing = c.get("sent_by_seq"), c.get("seq_missing")
        figures.send_span_s, figures.unstamped = c.get("send_span_s"), c.get("unstamped")
        report.sources.append(figures)
    report.rss_samples = rss
    return summarise(report, tails, rss, [*added_s.values(), *removed_s.values()])


def account(name: str, tail: LogTail, fps: float, added: float | None, removed: float | None, outages: int,
            dropped: float | None, processed: float | None, final_log: bool,
            stale_skipped: int | None) -> SourceFigures:
    """The frames of one source's log: captured, skipped (dropped to stay live), lost beyond outages."""
    rows = tail.rows
    frames = [r[0] for r in rows]
    increasing = all(b > a for a, b in itertools.pairwise(frames))
    expected = captured_in_segments = 0
    start = 0
    for k in range(1, len(rows) + 1):
        if k == len(rows) or rows[k][3] > 0:  # the segment ends before an outage's first frame
            seg = rows[start:k]
            if seg:
                expected += round((seg[-1][1] - seg[0][1]) * fps) + 1
                captured_in_segments += seg[-1][0] - seg[0][0] + 1
            start = k
    captured = frames[-1] + 1 if frames else 0
    return SourceFigures(
        name=name, added_s=added, removed_s=removed, outages_scheduled=outages, records=len(rows),
        faces=tail.faces, increasing=increasing, captured=captured, skipped=captured - len(rows),
        dropped_metric=None if dropped is None else int(dropped),
        processed_metric=None if processed is None else int(processed),
        gaps_logged=sum(1 for r in rows if r[3] > 0), gap_s_total=round(sum(r[3] for r in rows), 1),
        span_s=round(rows[-1][1] - rows[0][1], 1) if rows else 0.0, expected=expected,
        stale_skipped=stale_skipped,
        lost_unexplained=expected - captured_in_segments - (stale_skipped or 0), final_log=final_log)


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1) if values else math.nan


def summarise(report: FleetReport, tails: dict[str, LogTail], rss: list[tuple[float, float]],
              changes: list[float]) -> FleetReport:
    """Windows, memory growth, p95 drift and the totals."""
    points = [(r[1] + t.offset_s, r[2]) for t in tails.values() for r in t.rows if math.isfinite(t.offset_s)]
    points.sort()
    times = np.array([p[0] for p in points])
    lat = np.array([p[1] for p in points])
    t_first = float(times.min()) if len(times) else 0.0
    report.t_first_frame_s = round(t_first, 1)
    end_s = report.wall_s
    n = max(1, round((end_s - t_first) / report.window_s))
    for k in range(n):
        lo = t_first + k * report.window_s
        hi = end_s + 1e-6 if k == n - 1 else lo + report.window_s
        sel = lat[(times >= lo) & (times < hi)].tolist() if len(times) else []
        in_w = [mb for t, mb in rss if lo <= t < hi]
        down = len({o[0] for o in report.outages if o[1] < hi and (math.isnan(o[2]) or o[2] > lo)})
        report.windows.append(Window(round(lo, 1), round(hi, 1), in_w[-1] if in_w else math.nan, len(sel),
                                     _pct(sel, 50), _pct(sel, 95), down))
    running = [(t, mb) for t, mb in rss if t <= end_s]
    if running:
        warm_t = t_first + report.warmup_s
        warm = [mb for t, mb in running if t >= warm_t]
        report.rss_warm_mb = warm[0] if warm else running[-1][1]
        last_change = max(changes, default=0.0)
        after = [mb for t, mb in running if t >= max(last_change + report.window_s, warm_t)]
        report.rss_after_changes_mb = after[0] if after else math.nan
        report.rss_end_mb = running[-1][1]
        report.rss_max_mb = max(mb for _, mb in running)
        report.memory_growth_mb = round(report.rss_end_mb - report.rss_warm_mb, 1)
        report.memory_growth_after_changes_mb = round(report.rss_end_mb - report.rss_after_changes_mb, 1)
    # Window starts are rounded to 0.1 s.
    measured = [w for w in report.windows if w.frames and w.t_start_s >= t_first + report.warmup_s - 0.1]
    if measured:
        report.latency_p95_first_ms = measured[0].latency_p95_ms
        report.latency_p95_last_ms = measured[-1].latency_p95_ms
        report.latency_drift = round(report.latency_p95_last_ms / report.latency_p95_first_ms, 2)
    report.frames_processed = sum(s.records for s in report.sources)
    report.frames_skipped = sum(s.skipped for s in report.sources)
    report.frames_expected = sum(s.expected for s in report.sources)
    report.frames_stale_skipped = sum(s.stale_skipped or 0 for s in report.sources)
    report.frames_lost_unexplained = sum(s.lost_unexplained for s in report.sources)
    return report


def table(report: FleetReport, every: int = 1) -> str:
    """The report as Markdown: the windows (every ``every``-th and the last), the sources, the figures."""
    rows = ["| window (s) | RSS (MB) | latency p50 (ms) | latency p95 (ms) | frames | cameras down |",
            "|---|---|---|---|---|---|"]
    for i, w in enumerate(report.windows):
        if i % every and i != len(report.windows) - 1:
            continue
        rows.append(f"| {w.t_start_s:g}-{w.t_end_s:g} | {w.rss_mb:.1f} | {w.latency_p50_ms:.1f} | "
                    f"{w.latency_p95_ms:.1f} | {w.frames} | {w.cameras_down or ''} |")
    rows += ["", "| source | added (s) | removed (s) | outages | gaps logged | records | captured | skipped "
             "(dropped metric) | sent while connected | stale, skipped undecoded | lost beyond outages | final log |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in report.sources:
        rows.append(f"| {s.name} | {'' if s.added_s is None else s.added_s} | "
                    f"{'' if s.removed_s is None else s.removed_s} | {s.outages_scheduled} | {s.gaps_logged} | "
                    f"{s.records} | {s.captured} | {s.skipped} ({s.dropped_metric}) | {s.expected} | "
                    f"{s.stale_skipped} | {s.lost_unexplained} | {'yes' if s.final_log else 'no'} |")
    lost_pct = 100.0 * report.frames_lost_unexplained / max(report.frames_expected, 1)
    rows += [
        "",
        f"source: {report.source}; {report.cameras} cameras at the start, 2 added, 1 removed; "
        f"serve's exit code {report.exit_code} (Ctrl-C); ran {report.wall_s:g} s",
        f"outages: {len(report.outages)} camera kills; broker down {report.broker_down}",
        f"frames: {report.frames_processed} processed, {report.frames_skipped} captured and dropped to stay live, "
        f"{report.frames_stale_skipped} skipped undecoded as stale; "
        f"lost beyond outages {report.frames_lost_unexplained} of {report.frames_expected} sent "
        f"({lost_pct:.2f} %)",
        f"memory: RSS {report.rss_warm_mb:.1f} MB {report.warmup_s:g} s after the first frame, "
        f"{report.rss_after_changes_mb:.1f} MB a window after the last add/remove, {report.rss_end_mb:.1f} MB at "
        f"the end (max {report.rss_max_mb:.1f}): growth {report.memory_growth_mb:+.1f} MB "
        f"({report.memory_growth_after_changes_mb:+.1f} MB after the changes)",
        f"latency p95: first window after the warm-up {report.latency_p95_first_ms:.1f} ms, last "
        f"{report.latency_p95_last_ms:.1f} ms: drift x{report.latency_drift:.2f}",
        f"MQTT: {report.mqtt_published} published (the publisher's count in its latest health message, with those "
        f"queued ahead of it), "
        f"{report.mqtt_received_by_then} received by then, {report.mqtt_received_total} in all; "
        f"{report.mqtt_dropped} dropped; by topic {report.mqtt_by_kind}",
        f"load average (1/5/15 min) at start {report.load_average[:3]}, at end {report.load_average[3:]}",
    ]
    with_stamps = [s for s in report.sources if s.sent_by_seq is not None]
    if with_stamps:
        sent = sum(s.sent_by_seq or 0 for s in with_stamps)
        missing = sum(s.seq_missing or 0 for s in with_stamps)
        stale = sum(s.stale_skipped or 0 for s in with_stamps)
        nominal = sum(round((s.send_span_s or 0.0) * report.fps) + 1 for s in with_stamps)
        rows.append(
            f"by the cameras' stamps: {sent} frames sent while connected ({nominal} at {report.fps:g} frames/s "
            f"over their send times: {nominal - sent} not sent), {missing} never returned by the readers, "
            f"{stale} of them skipped as stale: {missing - stale} lost in between; "
            f"{sum(s.unstamped or 0 for s in with_stamps)} frames without a readable stamp")
    if report.api_errors:
        rows.append("API errors: " + "; ".join(report.api_errors))
    return "\n".join(rows)


def plot(data: dict[str, Any], path: Path) -> None:
    """RSS, latency p50/p95 and frames/s over time from a report saved with ``--json``; camera outages shaded
    (matplotlib, Agg); dotted lines: sources added or removed, the broker killed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = data["windows"]
    scale = 60.0 if data["seconds"] >= 600 else 1.0
    fig, axes = plt.subplots(3, 1, figsize=(8, 6.5), sharex=True, dpi=80)
    rss = [(t, mb) for t, mb in data["rss_samples"] if t >= data["t_first_frame_s"]] or data["rss_samples"]
    axes[0].plot([t / scale for t, _ in rss], [mb for _, mb in rss], lw=1)
    axes[0].set_ylabel("RSS (MB)")
    mid = [(w["t_start_s"] + w["t_end_s"]) / 2 / scale for w in windows]
    axes[1].plot(mid, [w["latency_p50_ms"] for w in windows], "o-", ms=3, label="p50")
    axes[1].plot(mid, [w["latency_p95_ms"] for w in windows], "o-", ms=3, label="p95")
    axes[1].set_ylabel("latency (ms)")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(loc="upper right", fontsize=8)
    axes[2].plot(mid, [w["frames"] / max(w["t_end_s"] - w["t_start_s"], 1e-9) for w in windows], "o-", ms=3)
    axes[2].set_ylabel("frames/s (all sources)")
    axes[2].set_ylim(bottom=0)
    axes[2].set_xlabel("time (min)" if scale > 1 else "time (s)")
    marks = [t for t, what in data["actions"] if what.startswith(("added", "removed", "killed the broker"))]
    for ax in axes:
        for _, a, b in data["outages"]:
            ax.axvspan(a / scale, (b if b == b else a) / scale, color="tab:red", alpha=0.12, lw=0)
        for t in marks:
            ax.axvline(t / scale, color="grey", ls=":", lw=1)
        ax.grid(alpha=0.3)
    fig.suptitle(f"fleet soak: {data['cameras']} cameras + 2 added - 1 removed, {data['source']}; "
                 f"outages shaded", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3600.0, help="how long serve runs")
    parser.add_argument("--cameras", type=int, default=8, help="cameras at the start")
    parser.add_argument("--outages", type=int, help="camera kills (default: one per 2 minutes)")
    parser.add_argument("--outage-min", type=float, default=5.0)
    parser.add_argument("--outage-max", type=float, default=30.0)
    parser.add_argument("--broker-down", type=float, default=10.0, help="seconds the broker stays down")
    parser.add_argument("--window", type=float, help="report window (default 60 s, seconds/6 under 10 min)")
    parser.add_argument("--warmup", type=float, help="default: 5 minutes, a window under 10 min")
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--clip", type=Path, default=CARPHONE)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--keep", type=Path, help="copy the event logs and serve's stderr here")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--every", type=int, default=1, help="print every N-th window")
    parser.add_argument("--plot", type=Path, help="write a plot (PNG) here")
    parser.add_argument("--from-json", type=Path, help="no run: --plot a report saved with --json")
    args = parser.parse_args(argv)
    if args.from_json:
        if args.plot:
            plot(json.loads(args.from_json.read_text()), args.plot)
            print(f"wrote {args.plot}")
        return 0
    long = args.seconds >= 600
    window = args.window or (60.0 if long else args.seconds / 6)
    warmup = args.warmup if args.warmup is not None else (300.0 if long else window)
    outages = args.outages if args.outages is not None else max(1, round(args.seconds / 120))
    for why in (gstreamer_missing(), "" if MOSQUITTO else "mosquitto is not installed"):
        if why:
            print(f"soak_fleet: {why}", file=sys.stderr)
            return 2
    report = soak_fleet(args.seconds, cameras=args.cameras, outages=outages, outage_min=args.outage_min,
                        outage_max=args.outage_max, broker_down_s=args.broker_down, window_s=window,
                        warmup_s=warmup, sample_every=args.sample_every, size=args.size, fps=args.fps,
                        clip=args.clip, seed=args.seed, keep=args.keep, log=sys.stdout)
    report.machine = (f"{platform.machine()}, {os.cpu_count()} CPUs, "
                      f"{platform.python_implementation()} {platform.python_version()}")
    report.command = "python benchmarks/soak_fleet.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(table(report, args.every))
    if report.exit_code != 130:
        print("serve's stderr (last lines):\n  " + "\n  ".join(report.stderr_tail))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(asdict(report), indent=1))
        print(f"wrote {args.json}")
    if args.plot:
        plot(json.loads(json.dumps(asdict(report))), args.plot)
        print(f"wrote {args.plot}")
    ok = (report.exit_code == 130 and not report.api_errors and all(s.increasing for s in report.sources))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
