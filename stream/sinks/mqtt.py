"""Faces, emotion episodes and source health as JSON on an MQTT broker (``--mqtt``, the ``mqtt`` extra).

Topics, under the URL's prefix (``mqtt://host/emostream`` -> ``emostream``); ``<source>``
is the source's name in the run (as its outputs are named), ``/``, ``+``, ``#`` and
spaces made ``_``. README "MQTT" shows each payload.

    <prefix>/status                   "online" / "offline" (retained; "offline" is also the last will)
    <prefix>/<source>/availability    "online" while frames come, else "offline" (retained)
    <prefix>/<source>/health          state, fps, counts, reconnects, latency, error (retained; every
                                      ``health_interval_s`` and at once when the state changes)
    <prefix>/<source>/faces           the event-log record of the newest frame plus ``count`` and
                                      ``dominant`` (retained; when a face appears, goes or changes label,
                                      at most once per ``min_interval_s``)
    <prefix>/<source>/face/<id>       one tracked face: its event-log face record with source, frame, t
                                      (retained, on the same changes; emptied when the face is gone)
    <prefix>/<source>/episode         {"event": "start" | "end", ...} (not retained)
    <discovery_prefix>/sensor/...     Home Assistant discovery, when ``discovery`` is on

A source added while running is announced at once (discovery, health ``starting``, so a
camera that is down shows as such); a removed one's health says ``removed`` and its
availability turns ``offline``.

Episodes here are derived live, one frame at a time: a label takes over with the same
hysteresis as ``emostream episodes``, an episode starts once its label held for
``min_duration_s`` and ends when another label takes over or the face is gone for
``max_gap_s``. The episodes file written after a run also merges short runs into the
neighbour that follows them, which a live publisher cannot know yet, so the two can
differ at the edges of short episodes.

The pipeline never waits for the broker. ``on_result`` (the consuming thread) does a
few comparisons per face and, on a change, puts a message in a bounded outbox; a newer
state of a retained topic replaces the one still waiting. A publisher thread hands the
outbox to paho (at most :data:`MAX_IN_FLIGHT` messages not yet written to the socket)
whose network thread writes them and reconnects, with back-off, when the broker goes
away. A full outbox drops the message and counts it (``dropped``). After a reconnect
every retained topic is sent again, since a restarted broker may have lost them.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from stream.capture.credentials import with_password
from stream.config import Config, EpisodesConfig, MqttConfig
from stream.episodes import Episode
from stream.errors import ConfigError
from stream.labels import face_label
from stream.records import FrameResult
from stream.redact import redact_url
from stream.render.record import frame_event
from stream.sinks.health import SourceHealth
from stream.summary import RunSummary

__all__ = ["MAX_IN_FLIGHT", "PASSWORD_ENV", "MqttPublisher", "MqttTarget", "parse_mqtt_url"]

log = logging.getLogger(__name__)

#: The broker's password, read before the cameras' variables.
PASSWORD_ENV = "EMOSTREAM_MQTT_PASSWORD"
#: Messages handed to paho and not yet written to its socket; more wait in the outbox.
MAX_IN_FLIGHT = 100
_TICK_S = 0.25
_EXTRA_HINT = "--mqtt needs the mqtt extra: pip install 'emostream[mqtt]'"


@dataclass(frozen=True)
class MqttTarget:
    """Where to publish, from ``mqtt://[user@]host[:port]/prefix``."""

    host: str
    port: int
    prefix: str
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def parse_mqtt_url(url: str, environ: dict[str, str] | None = None) -> MqttTarget:
    """Read ``mqtt://[user@]host[:port]/prefix`` (``mqtts://``: TLS, port 8883 by default).

    The password never comes from the URL (it would show in ``ps``): ``$EMOSTREAM_MQTT_PASSWORD``,
    else the cameras' variables (``$EMOSTREAM_PASSWORD_<HOST>``, ``$EMOSTREAM_PASSWORD``,
    :mod:`stream.capture.credentials`), when the URL names a user.

    Raises:
        ConfigError: Another scheme, no host, a password in the URL, or a bad port or prefix.
    """
    env = os.environ if environ is None else environ
    shown = redact_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"--mqtt {shown!r}: expected mqtt://[user@]host[:port]/prefix")
    if parts.password is not None:
        raise ConfigError(f"--mqtt {shown!r}: put the password in ${PASSWORD_ENV}, not in the URL")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"--mqtt {shown!r}: the port must be a number from 1 to 65535") from None
    if not parts.hostname:
        raise ConfigError(f"--mqtt {shown!r}: no broker host")
    prefix = unquote(parts.path).strip("/") or "emostream"
    if any(c in prefix for c in "+#\0") or "//" in prefix:
        raise ConfigError(f"--mqtt {shown!r}: the topic prefix {prefix!r} may not hold '+', '#' or empty levels")
    tls = parts.scheme == "mqtts"
    username = unquote(parts.username) if parts.username else None
    password = None
    if username:
        password = env.get(PASSWORD_ENV) or urlsplit(with_password(url, env)).password
        password = unquote(password) if password else None
    return MqttTarget(parts.hostname, port or (8883 if tls else 1883), prefix, tls, username, password)


class _Outbox:
    """A bounded queue of ``(topic, payload, retain)``; a retained topic waits at most once (newest wins)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.dropped = 0
        self._items: OrderedDict[Any, tuple[str, bytes, bool]] = OrderedDict()
        self._seq = 0
        self._lock = threading.Lock()

    def put(self, topic: str, payload: bytes, retain: bool) -> bool:
        with self._lock:
            key: Any = topic if retain else None
            if key is not None and key in self._items:
                self._items[key] = (topic, payload, retain)  # keeps its place in line
                return True
            if len(self._items) >= self.capacity:
                self.dropped += 1
                return False
            if key is None:
                self._seq += 1
                key = ("event", self._seq)
            self._items[key] = (topic, payload, retain)
            return True

    def take(self) -> tuple[str, bytes, bool] | None:
        with self._lock:
            return self._items.popitem(last=False)[1] if self._items else None

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _Track:
    """A tracked face as the live episode rule sees it."""

    label: int
    start_frame: int
    start_s: float
    last_frame: int
    last_s: float
    frames: int = 0
    conf_sum: float = 0.0
    peak: float = -1.0
    peak_frame: int = 0
    started: bool = False
    published_label: str | None = None

    def add(self, probs: np.ndarray, frame: int, t_s: float) -> None:
        p = float(probs[self.label])
        self.frames += 1
        self.conf_sum += p
        if p > self.peak:
            self.peak, self.peak_frame = p, frame
        self.last_frame, self.last_s = frame, t_s


@dataclass
class _Source:
    health: SourceHealth
    display: str  # the source as the event log names it
    tracks: dict[int, _Track] = field(default_factory=dict)
    faces_key: tuple[tuple[int, str], ...] | None = None
    last: FrameResult | None = None  # the newest result (its faces state may wait for min_interval_s)
    last_key: tuple[tuple[int, str], ...] | None = None
    next_faces_s: float = 0.0
    dt_s: float = 0.0
    t_media_s: float | None = None
    published_state: str = ""
    next_health_s: float = 0.0


class MqttPublisher:
    """The MQTT sink of a pipeline (see the module docstring): ``start``, hand it to the pipeline, ``close``.

    Args:
        config: The ``mqtt:`` block (``url`` must be set).
        labels: The classifier's labels.
        uncertain_below: As ``classifier.uncertain_below`` (faces' labels, as in the event log).
        episodes: The episode rules (hysteresis, minimum duration, gap).
        client_id: MQTT client id (default: ``emostream-<prefix>-<pid>``).

    Raises:
        ConfigError: A bad URL, or the mqtt extra (paho-mqtt) is not installed.
    """

    wants_images = False  # nothing here draws: the pipeline need not annotate frames for it

    def __init__(self, config: MqttConfig, labels: Sequence[str], *, uncertain_below: float = 0.0,
                 episodes: EpisodesConfig | None = None, client_id: str | None = None) -> None:
        try:
            import paho.mqtt.client as paho
        except ImportError as err:
            raise ConfigError(f"{_EXTRA_HINT} ({err.name} is missing)") from None
        if not config.url:
            raise ConfigError("mqtt.url: no broker URL (--mqtt mqtt://host/prefix)")
        self.config = config
        self.target = parse_mqtt_url(config.url)
        self.labels = tuple(labels)
        self.uncertain_below = uncertain_below
        self.episodes = episodes or EpisodesConfig()
        self.prefix = self.target.prefix
        self.published = 0
        self.connects = 0
        self._paho = paho
        self._outbox = _Outbox(config.queue_size)
        self._sources: dict[int, _Source] = {}
        self._sources_lock = threading.Lock()
        self._retained: dict[str, bytes] = {}  # last value sent of every retained topic (re-sent on reconnect)
        self._in_flight = 0
        self._lost = 0
        self._state_lock = threading.Lock()
        self._connected = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._status_topic = f"{self.prefix}/status"
        cid = client_id or f"emostream-{self.prefix.replace('/', '-')}-{os.getpid()}"
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=cid)
        if self.target.username:
            client.username_pw_set(self.target.username, self.target.password)
        if self.target.tls:
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.will_set(self._status_topic, b"offline", qos=config.qos, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=2)  # a broker back is found within 2 s
        client.connect_timeout = 3.0  # bounds close() while a connect to an unreachable host is pending
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    @classmethod
    def from_config(cls, config: Config, labels: Sequence[str]) -> MqttPublisher:
        """The publisher of ``config.mqtt`` with the run's labelling and episode rules (not started)."""
        return cls(config.mqtt, labels, uncertain_below=config.classifier.uncertain_below, episodes=config.episodes)

    @property
    def dropped(self) -> int:
        """Messages never handed to the broker: the outbox was full, or they were lost in a disconnect."""
        return self._outbox.dropped + self._lost

    @property
    def connected(self) -> bool:
        """Whether the client is connected to the broker now."""
        return self._connected.is_set()

    # -- Life cycle --------------------------------------------------------------------------------

    def start(self) -> MqttPublisher:
        """Connect in the background (a broker that is down is retried; nothing waits for it)."""
        self._client.connect_async(self.target.host, self.target.port, keepalive=30)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._run, name="emostream-mqtt", daemon=True)
        self._thread.start()
        log.info("mqtt: publishing to %s:%d under '%s/'", self.target.host, self.target.port, self.prefix)
        return self

    def close(self, timeout_s: float = 3.0) -> None:
        """Publish the final health and ``offline``, wait up to ``timeout_s`` for them, disconnect (idempotent)."""
        if self._closed:
            return
        self._closed = True
        now = time.monotonic()
        for src in list(self._sources.values()):
            src.health.on_end()  # a run stopped early (Ctrl-C, --max-seconds) ends its sources here
            self._publish_health(src, now)
        self._retain(self._status_topic, b"offline")
        deadline = time.monotonic() + timeout_s
        while (len(self._outbox) or self._in_flight) and self.connected and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
        if self.dropped:
            log.warning("mqtt: %d message(s) dropped (broker unreachable or too slow)", self.dropped)

    def __enter__(self) -> MqttPublisher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- Sink (the pipeline's consuming thread: constant, small work) -------------------------

    def on_start(self, summaries: list[RunSummary]) -> None:
        for summary in summaries:
            self._source(summary)
        self._wake.set()

    def on_source_added(self, summary: RunSummary) -> None:
        self._source(summary)  # announced now, state "starting": a camera that is down shows as such
        self._wake.set()

    def on_result(self, result: FrameResult, summary: RunSummary) -> None:
        src = self._source(summary)
        now = time.monotonic()
        src.health.on_frame(result, now)
        src.display = result.frame.source
        t = result.frame.t_media_s
        if src.t_media_s is not None and t > src.t_media_s:
            src.dt_s = t - src.t_media_s
        src.t_media_s = t
        self._episodes(src, result)
        key = tuple((f.id, face_label(f.probs, self.labels, self.uncertain_below)) for f in result.faces)
        src.last, src.last_key = result, key
        if key != src.faces_key and now >= src.next_faces_s:
            src.faces_key, src.next_faces_s = key, now + self.config.min_interval_s
            self._publish_faces(src, result)
        if src.published_state != "up":
            self._wake.set()  # the publisher thread announces it at once

    def on_source_end(self, summary: RunSummary) -> None:
        src = self._source(summary)
        src.health.on_end()
        if src.last is not None and src.last_key != src.faces_key:  # a change the rate limit held back
            src.faces_key = src.last_key
            self._publish_faces(src, src.last)
        src.last = None
        for track_id in list(src.tracks):
            self._end_track(src, track_id, clear=True)
        self._publish_health(src, time.monotonic())

    # -- Messages ----------------------------------------------------------------------------------

    def _source(self, summary: RunSummary) -> _Source:
        src = self._sources.get(summary.source_id)
        if src is None:  # a source added while running is announced like the first ones
            with self._sources_lock:
                src = self._sources[summary.source_id] = _Source(SourceHealth(summary), redact_url(summary.source))
            if self.config.discovery:
                self._announce(src)
        return src

    def _topic(self, src: _Source, *levels: object) -> str:
        return "/".join([self.prefix, src.health.name, *map(str, levels)])

    def _publish_faces(self, src: _Source, result: FrameResult) -> None:
        record = dict(frame_event(result, self.labels, uncertain_below=self.uncertain_below))  # shared: add to a copy
        labels = Counter(f["label"] for f in record["faces"])
        record["count"] = len(record["faces"])
        record["dominant"] = labels.most_common(1)[0][0] if labels else None
        self._retain(self._topic(src, "faces"), _json(record))
        for face in record["faces"]:
            track = src.tracks.get(face["id"])
            if track is not None and track.published_label != face["label"]:
                track.published_label = face["label"]
                face_record = {"source": record["source"], "frame": record["frame"], "t": record["t"], **face}
                self._retain(self._topic(src, "face", face["id"]), _json(face_record))

    def _episodes(self, src: _Source, result: FrameResult) -> None:
        rules = self.episodes
        frame, t = result.frame.index, result.frame.t_media_s
        for face in result.faces:
            if face.id < 0 or face.probs.size != len(self.labels):
                continue
            top = int(np.argmax(face.probs))
            track = src.tracks.get(face.id)
            if track is None:
                track = src.tracks[face.id] = _Track(top, frame, t, frame, t)
            elif top != track.label and face.probs[top] - face.probs[track.label] > rules.hysteresis:
                if track.started:
                    self._event(src, {"event": "end", **self._episode(src, face.id, track, end_s=t).to_record()})
                published = track.published_label
                track = src.tracks[face.id] = _Track(top, frame, t, frame, t, published_label=published)
            track.add(face.probs, frame, t)
            if not track.started and track.last_s - track.start_s >= rules.min_duration_s:
                track.started = True
                self._event(src, {"event": "start", "source": src.display, "track_id": face.id,
                                  "label": self.labels[track.label], "start_frame": track.start_frame,
                                  "start_s": round(track.start_s, 4)})
        for track_id, track in list(src.tracks.items()):
            if t - track.last_s > rules.max_gap_s:
                self._end_track(src, track_id, clear=True)

    def _episode(self, src: _Source, track_id: int, track: _Track, end_s: float) -> Episode:
        return Episode(source=src.display, track_id=track_id, label=self.labels[track.label],
                       start_frame=track.start_frame, end_frame=track.last_frame, start_s=track.start_s,
                       end_s=end_s, frames=track.frames, mean_confidence=track.conf_sum / max(track.frames, 1),
                       peak_confidence=track.peak, peak_frame=track.peak_frame)

    def _end_track(self, src: _Source, track_id: int, *, clear: bool) -> None:
        track = src.tracks.pop(track_id)
        if track.started:
            end = self._episode(src, track_id, track, end_s=track.last_s + src.dt_s)
            self._event(src, {"event": "end", **end.to_record()})
        if clear and track.published_label is not None:
            self._retain(self._topic(src, "face", track_id), b"")  # an empty retained message deletes it

    def _event(self, src: _Source, record: dict[str, Any]) -> None:
        self._outbox.put(self._topic(src, "episode"), _json(record), False)
        self._wake.set()

    def _retain(self, topic: str, payload: bytes) -> None:
        with self._state_lock:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)
        self._outbox.put(topic, payload, True)
        self._wake.set()

    def _publish_health(self, src: _Source, now: float) -> None:
        record = src.health.record(now)
        record["mqtt_dropped"] = self.dropped
        record["mqtt_published"] = self.published  # handed to the broker so far
        record["mqtt_pending"] = len(self._outbox) + self._in_flight  # queued or in flight: sent before this one
        src.published_state = record["state"]
        src.next_health_s = now + self.config.health_interval_s
        self._retain(self._topic(src, "health"), _json(record))
        self._retain(self._topic(src, "availability"), b"online" if record["state"] == "up" else b"offline")

    def _announce(self, src: _Source) -> None:
        """Home Assistant MQTT discovery: the source's dominant emotion and its face count, as two sensors."""
        node = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.prefix)
        uid = f"emostream_{node}_{src.health.name}"
        device = {"identifiers": [uid], "name": f"emostream {src.health.name}", "manufacturer": "emostream",
                  "model": "emotion camera"}
        availability = [{"topic": self._status_topic}, {"topic": self._topic(src, "availability")}]
        faces = self._topic(src, "faces")
        sensors = {
            "emotion": {"name": "Emotion", "icon": "mdi:emoticon-outline", "state_topic": faces,
                        "value_template": "{{ value_json.dominant if value_json.dominant else 'none' }}",
                        "json_attributes_topic": faces},
            "faces": {"name": "Faces", "icon": "mdi:face-recognition", "state_topic": faces,
                      "value_template": "{{ value_json.count }}", "state_class": "measurement",
                      "unit_of_measurement": "faces"},
        }
        for key, sensor in sensors.items():
            config = {**sensor, "unique_id": f"{uid}_{key}", "object_id": f"{uid}_{key}", "device": device,
                      "availability": availability, "availability_mode": "all"}
            self._retain(f"{self.config.discovery_prefix}/sensor/{uid}/{key}/config", _json(config))

    # -- The publisher thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(_TICK_S)
            self._wake.clear()
            now = time.monotonic()
            for src in list(self._sources.values()):
                if src.health.ended:
                    continue
                if src.health.state(now) != src.published_state or now >= src.next_health_s:
                    self._publish_health(src, now)
            self._drain()

    def _drain(self) -> None:
        while self._connected.is_set():
            with self._state_lock:
                if self._in_flight >= MAX_IN_FLIGHT:
                    return
            item = self._outbox.take()
            if item is None:
                return
            topic, payload, retain = item
            with self._state_lock:
                self._in_flight += 1
            info = self._client.publish(topic, payload, qos=self.config.qos, retain=retain)
            if info.rc != self._paho.MQTT_ERR_SUCCESS:
                with self._state_lock:
                    self._in_flight -= 1
                if retain:
                    self._outbox.put(topic, self._retained.get(topic, payload), True)  # sent again on reconnect
                else:
                    self._lost += 1
                return

    # -- paho callbacks (its network thread) -------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt: %s:%d refused the connection: %s", self.target.host, self.target.port, reason)
            return
        self.connects += 1
        if self.connects > 1:
            log.warning("mqtt: reconnected to %s:%d", self.target.host, self.target.port)
        with self._state_lock:
            self._lost += self._in_flight  # written to a socket that closed: the broker may not have them
            self._in_flight = 0
            retained = dict(self._retained)
        self._outbox.put(self._status_topic, b"online", True)
        for topic, payload in retained.items():  # a restarted broker may have lost them
            if topic != self._status_topic:
                self._outbox.put(topic, payload, True)
        self._connected.set()
        self._wake.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self._connected.is_set() and not self._closed:
            log.warning("mqtt: lost the broker %s:%d (%s); reconnecting", self.target.host, self.target.port,
                        reason)
        self._connected.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._state_lock:
            self._in_flight = max(0, self._in_flight - 1)
        self.published += 1
        self._wake.set()


def _json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode("utf-8")
