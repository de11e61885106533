"""Per-person emotion episodes: who felt what, from when to when.

The event log says, for every frame, each face's probabilities. An *episode*
is a stretch of time in which one tracked face shows one emotion::

    {"source": "clip.mp4", "track_id": 0, "label": "happy", "start_frame": 31, "end_frame": 66,
     "start_s": 1.0344, "end_s": 2.2356, "duration_s": 1.2012, "frames": 36,
     "mean_confidence": 0.5123, "peak_confidence": 0.7034, "peak_frame": 52}

Three rules (``episodes:`` in ``config.yaml``, :class:`~stream.config.EpisodesConfig`)
keep a one-frame flicker from becoming an episode:

1. **Gaps.** A face missing for more than ``max_gap_s`` ends its episode; a
   shorter absence (a missed detection, a head turn) is bridged.
2. **Hysteresis.** A new label takes over only when its probability beats the
   current label's by ``hysteresis``; near-ties keep the current label.
3. **Minimum duration.** A run of one label shorter than ``min_duration_s`` is
   merged into a neighbour (the one whose label the run's frames rate higher),
   shortest first; a face seen for less than that in all is no episode.

An episode covers ``[start_s, end_s)``: from its first frame to the next
episode's first frame, or to one frame interval after its last frame.
``start_frame`` and ``end_frame`` are the first and last frame indices in it.

The input is an :class:`EventTable` (one array per field, like
``supervision.Detections``), read from a finished event log with
:meth:`EventTable.from_jsonl` or built from in-memory results with
:meth:`EventTable.from_results`. Everything here is NumPy.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from stream.config import EpisodesConfig
from stream.contract import printable
from stream.errors import DataError
from stream.records import FrameResult
from stream.userfile import excerpt, open_user_file

__all__ = [
    "Episode",
    "EventTable",
    "derive_episodes",
    "episodes_path",
    "episodes_text",
    "label_runs",
    "log_name",
    "read_event_log",
    "write_episodes",
]

log = logging.getLogger(__name__)

#: Largest event log read (an hour of one face at 30 frames/s is ~40 MB).
MAX_EVENT_LOG_BYTES = 2 << 30
#: Longest line of an event log (a frame with a few hundred faces).
MAX_EVENT_LINE_BYTES = 1 << 20


def read_event_log(path: Path) -> Iterator[tuple[int, Any]]:
    """Each line of a JSON Lines event log as ``(line number, parsed JSON)``: the one reader of event logs
    (the episodes, the report and the batch dataset use it).

    The file is read as every user file is (a regular file, at most :data:`MAX_EVENT_LOG_BYTES`,
    lines of at most :data:`MAX_EVENT_LINE_BYTES`); blank lines are skipped, and a last line cut
    short by a crash (no newline at its end) is skipped with a warning.

    Raises:
        DataError: The file is missing, unreadable or too large, or a line is not JSON.
    """
    path = Path(path)
    shown = printable(str(path))
    read = 0
    with open_user_file(path, "event log", max_bytes=MAX_EVENT_LOG_BYTES, error=DataError) as fh:
        for number in itertools.count(1):
            try:
                raw = fh.readline(MAX_EVENT_LINE_BYTES + 1)
            except OSError as err:
                raise DataError(f"event log '{shown}' could not be read: {err.strerror or err}") from None
            if not raw:
                break
            read += len(raw)
            if read > MAX_EVENT_LOG_BYTES:
                raise DataError(f"event log '{shown}' is larger than {MAX_EVENT_LOG_BYTES >> 20} MB")
            if len(raw) > MAX_EVENT_LINE_BYTES:
                raise DataError(f"event log '{shown}' line {number}: longer than "
                                f"{MAX_EVENT_LINE_BYTES >> 10} KB: not a frame record")
            complete = raw.endswith(b"\n")
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                if not complete:
                    log.warning("event log '%s': last line %d is cut short; skipped", shown, number)
                    break
                why = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8 text"
                raise DataError(f"event log '{shown}' line {number}: not JSON ({why})") from None
            except RecursionError:
                raise DataError(f"event log '{shown}' line {number}: nested too deeply") from None
            yield number, record


@dataclass(frozen=True)
class EventTable:
    """A run's event log as arrays: one row per frame, and one row per face seen.

    Attributes:
        labels: The classifier's labels, in the order of ``face_probs``' columns.
        sources: Source names; ``frame_source`` and ``face_source`` index into it.
        frame_source: ``(F,)`` source of each frame line.
        frame_index: ``(F,)`` frame index within its source.
        frame_t_s: ``(F,)`` media time of the frame, seconds.
        frame_latency_ms: ``(F,)`` capture-to-result latency (NaN when not recorded).
        frame_gap_s: ``(F,)`` outage that ended just before this frame (0 if none).
        face_row: ``(N,)`` position of the face's frame in the log (= frame written to the annotated video).
        face_source: ``(N,)`` source of the face.
        face_frame: ``(N,)`` frame index of the face.
        face_t_s: ``(N,)`` media time of the face's frame.
        face_track_id: ``(N,)`` track id (stable while the face stays in view).
        face_score: ``(N,)`` detector confidence.
        face_box_xyxy: ``(N, 4)`` box in source pixels.
        face_probs: ``(N, K)`` emotion probabilities.
    """

    labels: tuple[str, ...]
    sources: tuple[str, ...]
    frame_source: np.ndarray
    frame_index: np.ndarray
    frame_t_s: np.ndarray
    frame_latency_ms: np.ndarray
    frame_gap_s: np.ndarray
    face_row: np.ndarray
    face_source: np.ndarray
    face_frame: np.ndarray
    face_t_s: np.ndarray
    face_track_id: np.ndarray
    face_score: np.ndarray
    face_box_xyxy: np.ndarray
    face_probs: np.ndarray

    @property
    def frames(self) -> int:
        """Frame lines in the log."""
        return int(self.frame_index.shape[0])

    @property
    def faces(self) -> int:
        """Faces in all frames."""
        return int(self.face_track_id.shape[0])

    def tracks(self) -> list[tuple[int, int]]:
        """``(source, track_id)`` of every track, most-seen first (ties: by source, then id)."""
        if not self.faces:
            return []
        keys, counts = np.unique(np.stack([self.face_source, self.face_track_id], axis=1), axis=0,
                                 return_counts=True)
        order = np.lexsort((keys[:, 1], keys[:, 0], -counts))
        return [(int(keys[i, 0]), int(keys[i, 1])) for i in order]

    def track_mask(self, source: int, track_id: int) -> np.ndarray:
        """Boolean ``(N,)`` mask of one track's faces."""
        return (self.face_source == source) & (self.face_track_id == track_id)

    def frame_interval_s(self, source: int = 0) -> float:
        """Typical time between two frames of ``source`` (median), 0 with fewer than two frames."""
        t = np.unique(self.frame_t_s[self.frame_source == source])
        steps = np.diff(t)
        steps = steps[steps > 0]
        return float(np.median(steps)) if steps.size else 0.0

    @classmethod
    def from_jsonl(cls, path: Path) -> EventTable:
        """Read a JSON Lines event log (the format in README's "The event log").

        A last line cut short by a crash (no newline at its end) is skipped with a warning.

        Raises:
            DataError: The file is missing, unreadable, empty, or a line is not a valid frame record.
        """
        builder = _Builder(Path(path))
        for number, record in read_event_log(path):
            builder.add(record, number)
        return builder.build()

    @classmethod
    def from_results(cls, results: Iterable[FrameResult], labels: Sequence[str]) -> EventTable:
        """Build the table from in-memory pipeline results (no event log needed).

        Args:
            results: Frame results in processing order.
            labels: The classifier's labels, in the order of each face's ``probs``.
        """
        builder = _Builder(Path("<results>"), tuple(labels))
        for result in results:
            builder.add_frame(result.frame.source, result.frame.index, result.frame.t_media_s,
                              result.latency_ms, 0.0)
            for face in result.faces:
                builder.add_face(face.id, face.score, [float(v) for v in face.box_xyxy],
                                 [float(p) for p in face.probs])
        return builder.build()


class _Builder:
    """Collects records into lists, checking each field; ``build`` makes the arrays."""

    def __init__(self, path: Path, labels: tuple[str, ...] | None = None) -> None:
        self.path = path
        self.labels = labels
        self.sources: dict[str, int] = {}
        self.frames: list[tuple[int, int, float, float, float]] = []
        self.face_meta: list[tuple[int, int, int, float, int, float]] = []
        self.boxes: list[list[float]] = []
        self.probs: list[list[float]] = []

    def _bad(self, number: int, what: str) -> DataError:
        return DataError(f"event log '{printable(str(self.path))}' line {number}: {what}")

    def add(self, record: Any, number: int) -> None:
        if not isinstance(record, dict):
            raise self._bad(number, f"expected a JSON object, got {type(record).__name__}")
        frame, t, faces = record.get("frame"), record.get("t"), record.get("faces")
        if not _is_int(frame):
            raise self._bad(number, f"'frame' must be an integer, got {excerpt(frame)}")
        if not _is_number(t):
            raise self._bad(number, f"'t' must be a number, got {excerpt(t)}")
        if not isinstance(faces, list):
            raise self._bad(number, f"'faces' must be a list, got {excerpt(faces)}")
        latency, gap = record.get("latency_ms"), record.get("gap_s", 0.0)
        if (latency is not None and not _is_number(latency)) or not _is_number(gap):
            raise self._bad(number, f"'latency_ms' and 'gap_s' must be numbers, got {excerpt(latency)} and "
                                    f"{excerpt(gap)}")
        latency = math.nan if latency is None else latency
        self.add_frame(str(record.get("source", "")), frame, t, latency, gap)
        for face in faces:
            if not isinstance(face, dict):
                raise self._bad(number, f"each face must be a JSON object, got {excerpt(face)}")
            track, score, box, probs = face.get("id"), face.get("score", 1.0), face.get("box_xyxy"), face.get("probs")
            if not _is_int(track):
                raise self._bad(number, f"face 'id' must be an integer, got {excerpt(track)}")
            if not _is_number(score):
                raise self._bad(number, f"face 'score' must be a number, got {excerpt(score)}")
            if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
                raise self._bad(number, f"face 'box_xyxy' must be 4 numbers, got {excerpt(box)}")
            if not (isinstance(probs, dict) and probs and all(_is_number(v) for v in probs.values())):
                raise self._bad(number, f"face 'probs' must map labels to numbers, got {excerpt(probs)}")
            if self.labels is None:
                self.labels = tuple(probs)
            elif set(probs) != set(self.labels):
                raise self._bad(number, f"face 'probs' has labels {excerpt(sorted(probs), 200)}, earlier lines "
                                        f"{excerpt(sorted(self.labels), 200)}")
            self.add_face(track, score, box, [probs[k] for k in self.labels])

    def add_frame(self, source: str, frame: int, t: float, latency: float, gap: float) -> None:
        src = self.sources.setdefault(source, len(self.sources))
        self.frames.append((src, frame, t, latency, gap))

    def add_face(self, track: int, score: float, box: list[float], probs: list[float]) -> None:
        row = len(self.frames) - 1
        src, frame, t, _, _ = self.frames[row]
        self.face_meta.append((row, src, frame, t, track, score))
        self.boxes.append(box)
        self.probs.append(probs)

    def build(self) -> EventTable:
        if not self.frames:
            raise DataError(f"event log '{printable(str(self.path))}' holds no frames")
        k = len(self.labels or ())
        fr = np.array(self.frames, np.float64).reshape(-1, 5)
        meta = np.array(self.face_meta, np.float64).reshape(-1, 6)
        return EventTable(
            labels=self.labels or (),
            sources=tuple(self.sources),
            frame_source=fr[:, 0].astype(np.int64),
            frame_index=fr[:, 1].astype(np.int64),
            frame_t_s=fr[:, 2],
            frame_latency_ms=fr[:, 3],
            frame_gap_s=fr[:, 4],
            face_row=meta[:, 0].astype(np.int64),
            face_source=meta[:, 1].astype(np.int64),
            face_frame=meta[:, 2].astype(np.int64),
            face_t_s=meta[:, 3],
            face_track_id=meta[:, 4].astype(np.int64),
            face_score=meta[:, 5].astype(np.float32),
            face_box_xyxy=np.array(self.boxes, np.float32).reshape(-1, 4),
            face_probs=np.array(self.probs, np.float32).reshape(len(self.probs), k),
        )


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Episode:
    """One tracked face showing one emotion for a while.

    Attributes:
        source: Source name (as in the event log).
        track_id: The face's track id.
        label: The emotion.
        start_frame: First frame index in the episode.
        end_frame: Last frame index in the episode (inclusive).
        start_s: Media time the episode starts.
        end_s: Media time it ends (the next episode's start, or one frame after its last frame).
        frames: Frames in which the face was seen during the episode.
        mean_confidence: Mean probability of ``label`` over those frames.
        peak_confidence: Highest probability of ``label`` over those frames.
        peak_frame: Frame index of that peak.
    """

    source: str
    track_id: int
    label: str
    start_frame: int
    end_frame: int
    start_s: float
    end_s: float
    frames: int
    mean_confidence: float
    peak_confidence: float
    peak_frame: int

    @property
    def duration_s(self) -> float:
        """``end_s - start_s``."""
        return self.end_s - self.start_s

    def to_record(self) -> dict[str, Any]:
        """The JSON object written to ``<name>.episodes.jsonl``."""
        return {
            "source": self.source, "track_id": self.track_id, "label": self.label,
            "start_frame": self.start_frame, "end_frame": self.end_frame,
            "start_s": round(self.start_s, 4), "end_s": round(self.end_s, 4),
            "duration_s": round(self.duration_s, 4), "frames": self.frames,
            "mean_confidence": round(self.mean_confidence, 4), "peak_confidence": round(self.peak_confidence, 4),
            "peak_frame": self.peak_frame,
        }


def label_runs(t_s: np.ndarray, probs: np.ndarray, config: EpisodesConfig, frame_interval_s: float
               ) -> list[tuple[int, int, int, float]]:
    """Split one track's frames into runs of one label, after the three rules.

    Args:
        t_s: ``(n,)`` media times of the track's frames, increasing.
        probs: ``(n, K)`` their probabilities.
        config: The episode rules.
        frame_interval_s: Typical time between frames (an episode's last frame lasts this long).

    Returns:
        ``(first, stop, label, end_s)`` per run: rows ``first:stop`` of the inputs, the label's column,
        and when the run ends (the next run's start, or one frame interval after its last frame).
    """
    t_s = np.asarray(t_s, np.float64)
    probs = np.asarray(probs, np.float64)
    if t_s.size == 0:
        return []
    # 1. Segments: a gap longer than max_gap_s ends everything that is open.
    cuts = np.flatnonzero(np.diff(t_s) > config.max_gap_s) + 1
    bounds = np.concatenate([[0], cuts, [t_s.size]])
    runs: list[tuple[int, int, int, float]] = []
    for first, stop in itertools.pairwise(bounds.tolist()):
        runs.extend(_segment_runs(t_s[first:stop], probs[first:stop], config, frame_interval_s, int(first)))
    return runs


def _segment_runs(t_s: np.ndarray, probs: np.ndarray, config: EpisodesConfig, frame_interval_s: float,
                  offset: int) -> list[tuple[int, int, int, float]]:
    # 2. Hysteresis: the top label takes over only with a margin. Sequential by nature; plain lists are fast.
    rows = probs.tolist()
    top = np.argmax(probs, axis=1).tolist()
    state = np.empty(len(rows), np.int64)
    current = top[0]
    for i, (p, best) in enumerate(zip(rows, top, strict=True)):
        if best != current and p[best] >= p[current] + config.hysteresis:
            current = best
        state[i] = current
    change = np.flatnonzero(np.diff(state)) + 1
    starts = np.concatenate([[0], change]).tolist()
    stops = [*change.tolist(), len(rows)]
    labels = [int(state[s]) for s in starts]
    end_t = float(t_s[-1]) + frame_interval_s
    # 3. Minimum duration: merge the shortest short run into a neighbour until none is left. The runs
    # form a linked list and a heap orders them by duration (ties: the earliest), so a long flickery
    # track costs O(runs log runs). A merged run keeps the index of its leftmost part.
    count = len(starts)
    nxt, prv = [*range(1, count), -1], list(range(-1, count - 1))
    version = [0] * count

    def ends(j: int) -> float:
        return float(t_s[starts[nxt[j]]]) if nxt[j] >= 0 else end_t

    def duration(j: int) -> float:
        return ends(j) - float(t_s[starts[j]])

    def absorb(left: int, right: int) -> None:
        stops[left], nxt[left] = stops[right], nxt[right]
        if nxt[right] >= 0:
            prv[nxt[right]] = left
        version[right] = -1  # gone: its heap entries are stale

    heap = [(duration(j), j, 0) for j in range(count)]
    heapq.heapify(heap)
    while heap:
        length, j, seen = heapq.heappop(heap)
        if seen != version[j]:
            continue
        if length >= config.min_duration_s:
            break
        if prv[j] < 0 and nxt[j] < 0:
            return []  # the face was not seen long enough for any episode
        # The neighbour whose label this run's own frames rate higher absorbs it.
        own = probs[starts[j]:stops[j]]
        into = max((n for n in (prv[j], nxt[j]) if n >= 0), key=lambda n: float(own[:, labels[n]].mean()))
        labels[j] = labels[into]
        if into == prv[j]:
            absorb(into, j)
            j = into
        else:
            absorb(j, into)
        # Its other neighbour may now show the same label: one run.
        if nxt[j] >= 0 and labels[nxt[j]] == labels[j]:
            absorb(j, nxt[j])
        if prv[j] >= 0 and labels[prv[j]] == labels[j]:
            left = prv[j]
            absorb(left, j)
            j = left
        version[j] += 1
        heapq.heappush(heap, (duration(j), j, version[j]))
    out = []
    j = 0  # the first run is never absorbed (only a right neighbour is)
    while j >= 0:
        out.append((starts[j] + offset, stops[j] + offset, labels[j], ends(j)))
        j = nxt[j]
    return out


def derive_episodes(table: EventTable, config: EpisodesConfig) -> list[Episode]:
    """Every track's episodes, by source, track id and start time.

    Args:
        table: The run's faces (see :class:`EventTable`).
        config: The episode rules (``episodes:`` in ``config.yaml``).

    Returns:
        The episodes; empty when no face was seen for ``min_duration_s``.
    """
    episodes: list[Episode] = []
    # One sort groups every track's rows (by source, id, time): a log with a thousand tracks is not
    # scanned a thousand times.
    order = np.lexsort((table.face_t_s, table.face_track_id, table.face_source))
    keys = np.stack([table.face_source[order], table.face_track_id[order]], axis=1)
    starts = np.flatnonzero(np.any(np.diff(keys, axis=0) != 0, axis=1)) + 1 if keys.shape[0] else np.zeros(0, int)
    for rows in np.split(order, starts) if order.size else []:
        source, track_id = int(table.face_source[rows[0]]), int(table.face_track_id[rows[0]])
        t_s, frames, probs = table.face_t_s[rows], table.face_frame[rows], table.face_probs[rows]
        interval = table.frame_interval_s(source)
        for first, stop, label, end_s in label_runs(t_s, probs, config, interval):
            conf = probs[first:stop, label].astype(np.float64)
            peak = int(np.argmax(conf))
            episodes.append(Episode(
                source=table.sources[source], track_id=track_id, label=table.labels[label],
                start_frame=int(frames[first]), end_frame=int(frames[stop - 1]),
                start_s=float(t_s[first]), end_s=end_s, frames=stop - first,
                mean_confidence=float(conf.mean()), peak_confidence=float(conf[peak]),
                peak_frame=int(frames[first + peak]),
            ))
    return episodes


def log_name(events_path: Path) -> str:
    """The run's name from its event log's file name: ``clip.events.jsonl`` -> ``clip``."""
    name = Path(events_path).name
    for suffix in (".events.jsonl", ".jsonl"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def episodes_path(events_path: Path) -> Path:
    """Where the episodes of ``events_path`` go: ``<name>.episodes.jsonl`` beside it."""
    return Path(events_path).with_name(f"{log_name(events_path)}.episodes.jsonl")


def episodes_text(episodes: Sequence[Episode]) -> str:
    """``episodes`` as JSON Lines (one :meth:`Episode.to_record` per line)."""
    return "".join(json.dumps(e.to_record(), separators=(",", ":")) + "\n" for e in episodes)


def write_episodes(episodes: Sequence[Episode], path: Path) -> Path:
    """Write ``episodes`` as JSON Lines, under a temporary name renamed when whole
    (:func:`stream.render.outputs.write_output`: an earlier file stays as it was on failure).

    Raises:
        OutputError: The file could not be written.
    """
    from stream.render.outputs import write_output

    return write_output(path, episodes_text(episodes), "episodes")
