"""Episodes from hand-made event logs: steady, flicker, near-ties, gaps, two people, bad logs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from stream.config import EpisodesConfig, load_config
from stream.episodes import EventTable, derive_episodes, episodes_path, log_name, write_episodes
from stream.errors import ConfigError, DataError
from stream.records import Face, Frame, FrameResult

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FPS = 30.0


def probs(label: str, p: float = 0.7, second: str | None = None, q: float = 0.0) -> list[float]:
    """``label`` at ``p`` (and ``second`` at ``q``), the rest spread evenly."""
    out = np.zeros(len(LABELS))
    out[LABELS.index(label)] = p
    if second is not None:
        out[LABELS.index(second)] = q
    rest = [i for i, v in enumerate(out) if v == 0]
    out[rest] = (1 - out.sum()) / len(rest)
    return out.tolist()


def write_log(path: Path, n_frames: int, tracks: dict[int, dict[int, list[float]]]) -> Path:
    """An event log in the README's format: ``tracks[id][frame] = probs`` (a missing frame: not seen)."""
    lines = []
    for frame in range(n_frames):
        faces = [{"id": tid, "box_xyxy": [10.0 + 100 * tid, 10.0, 60.0 + 100 * tid, 60.0], "score": 0.9,
                  "label": LABELS[int(np.argmax(seq[frame]))], "probs": dict(zip(LABELS, seq[frame], strict=True))}
                 for tid, seq in tracks.items() if frame in seq]
        lines.append(json.dumps({"source": "hand.mp4", "frame": frame, "t": round(frame / FPS, 4),
                                 "latency_ms": 5.0, "faces": faces}))
    path.write_text("\n".join(lines) + "\n")
    return path


def episodes_of(tmp_path: Path, n_frames: int, tracks: dict[int, dict[int, list[float]]],
                **rules: float) -> list[dict]:
    table = EventTable.from_jsonl(write_log(tmp_path / "hand.events.jsonl", n_frames, tracks))
    return [e.to_record() for e in derive_episodes(table, EpisodesConfig(**rules))]


def seq(*parts: tuple[int, list[float]], start: int = 0) -> dict[int, list[float]]:
    """Consecutive frames from ``start``: ``(count, probs)`` parts."""
    out, frame = {}, start
    for count, p in parts:
        for _ in range(count):
            out[frame] = p
            frame += 1
    return out


def test_steady_face_is_one_episode(tmp_path: Path) -> None:
    [ep] = episodes_of(tmp_path, 60, {0: seq((60, probs("happy", 0.7)))})
    assert (ep["track_id"], ep["label"], ep["start_frame"], ep["end_frame"], ep["frames"]) == (0, "happy", 0, 59, 60)
    assert ep["start_s"] == 0.0
    assert ep["end_s"] == pytest.approx(60 / FPS, abs=1e-3)  # one frame interval after the last frame
    assert ep["duration_s"] == pytest.approx(2.0, abs=1e-3)
    assert ep["mean_confidence"] == pytest.approx(0.7) and ep["peak_confidence"] == pytest.approx(0.7)


def test_one_frame_flicker_is_not_an_episode(tmp_path: Path) -> None:
    track = seq((30, probs("happy", 0.6)), (1, probs("sad", 0.9)), (29, probs("happy", 0.6)))
    [ep] = episodes_of(tmp_path, 60, {0: track})
    assert (ep["label"], ep["start_frame"], ep["end_frame"], ep["frames"]) == ("happy", 0, 59, 60)
    # The flicker's frame counts in the happy episode, with its (low) happy probability.
    assert ep["mean_confidence"] < 0.6
    # Without a minimum duration the same strong flicker is its own episode.
    labels = [e["label"] for e in episodes_of(tmp_path, 60, {0: track}, min_duration_s=0.0)]
    assert labels == ["happy", "sad", "happy"]


def test_hysteresis_keeps_the_label_through_near_ties(tmp_path: Path) -> None:
    a, b = probs("happy", 0.45, "sad", 0.40), probs("sad", 0.47, "happy", 0.42)
    track = seq(*[(3, a), (3, b)] * 10)  # the top label changes every 0.1 s, by 0.05
    assert [e["label"] for e in episodes_of(tmp_path, 60, {0: track}, min_duration_s=0.0)] == ["happy"]
    flicker = episodes_of(tmp_path, 60, {0: track}, min_duration_s=0.0, hysteresis=0.0)
    assert len(flicker) == 20
    # A clear change (by more than the margin) switches, at the frame it happens.
    change = seq((30, probs("happy", 0.6)), (30, probs("sad", 0.6)))
    first, second = episodes_of(tmp_path, 60, {0: change})
    assert (first["label"], first["end_frame"], second["label"], second["start_frame"]) == ("happy", 29, "sad", 30)
    assert first["end_s"] == second["start_s"] == pytest.approx(1.0, abs=1e-3)


def test_long_gap_ends_the_episode_short_gap_is_bridged(tmp_path: Path) -> None:
    happy = probs("happy", 0.7)
    long_gap = {**seq((30, happy)), **seq((30, happy), start=90)}  # away for 2 s
    first, second = episodes_of(tmp_path, 120, {0: long_gap})
    assert (first["start_frame"], first["end_frame"], second["start_frame"], second["end_frame"]) == (0, 29, 90, 119)
    assert first["end_s"] == pytest.approx(1.0, abs=1e-3)  # ends when the face left, not when it came back
    [bridged] = episodes_of(tmp_path, 120, {0: long_gap}, max_gap_s=3.0)
    assert (bridged["start_frame"], bridged["end_frame"], bridged["frames"]) == (0, 119, 60)
    short_gap = {**seq((30, happy)), **seq((30, happy), start=35)}  # 5 missed detections
    [ep] = episodes_of(tmp_path, 65, {0: short_gap})
    assert (ep["start_frame"], ep["end_frame"], ep["frames"]) == (0, 64, 60)


def test_face_seen_briefly_has_no_episode(tmp_path: Path) -> None:
    assert episodes_of(tmp_path, 30, {0: seq((5, probs("happy")), start=10)}) == []


def test_two_people_each_get_their_own_episodes(tmp_path: Path) -> None:
    tracks = {
        0: seq((90, probs("happy", 0.8))),
        3: seq((45, probs("sad", 0.6)), (2, probs("angry", 0.9)), (43, probs("neutral", 0.7))),
    }
    got = [(e["track_id"], e["label"], e["start_frame"], e["end_frame"]) for e in episodes_of(tmp_path, 90, tracks)]
    assert got == [(0, "happy", 0, 89), (3, "sad", 0, 46), (3, "neutral", 47, 89)]


def test_short_run_goes_to_the_neighbour_its_frames_rate_higher(tmp_path: Path) -> None:
    # 5 frames of surprise between happy and fear; they rate fear higher than happy.
    track = seq((30, probs("happy", 0.6)), (5, probs("surprise", 0.6, "fear", 0.3)), (30, probs("fear", 0.6)))
    first, second = episodes_of(tmp_path, 65, {0: track})
    assert (first["label"], first["end_frame"], second["label"], second["start_frame"]) == ("happy", 29, "fear", 30)


def test_in_memory_results_give_the_same_episodes(tmp_path: Path) -> None:
    tracks = {0: seq((40, probs("happy")), (40, probs("sad"))), 1: seq((50, probs("fear")), start=20)}
    from_log = episodes_of(tmp_path, 80, tracks)
    results = []
    for frame in range(80):
        image = np.zeros((8, 8, 3), np.uint8)
        faces = [Face(np.array([0, 0, 4, 4], np.float32), 0.9, np.array(s[frame], np.float32), tid)
                 for tid, s in tracks.items() if frame in s]
        now = time.perf_counter()
        results.append(FrameResult(Frame("hand.mp4", frame, round(frame / FPS, 4), now, image), faces, now))
    table = EventTable.from_results(results, LABELS)
    assert table.frames == 80 and table.faces == 80 + 50
    from_memory = [e.to_record() for e in derive_episodes(table, EpisodesConfig())]
    assert from_memory == from_log
    assert [e["label"] for e in from_log] == ["happy", "sad", "fear"]


def test_episodes_file_is_json_lines_beside_the_log(tmp_path: Path) -> None:
    log = write_log(tmp_path / "clip.events.jsonl", 60, {0: seq((60, probs("happy")))})
    assert episodes_path(log) == tmp_path / "clip.episodes.jsonl"
    assert episodes_path(tmp_path / "ev.jsonl") == tmp_path / "ev.episodes.jsonl"
    assert log_name(Path("a.b.events.jsonl")) == "a.b"
    episodes = derive_episodes(EventTable.from_jsonl(log), EpisodesConfig())
    path = write_episodes(episodes, episodes_path(log))
    [line] = path.read_text().splitlines()
    assert json.loads(line) == episodes[0].to_record()


def test_last_line_cut_short_is_skipped(tmp_path: Path) -> None:
    log = write_log(tmp_path / "x.events.jsonl", 40, {0: seq((40, probs("happy")))})
    text = log.read_text()
    log.write_text(text + text.splitlines()[-1][:25])  # a crash mid-line: no newline at the end
    assert EventTable.from_jsonl(log).frames == 40


GOOD = {"frame": 0, "t": 0.0, "faces": [{"id": 0, "box_xyxy": [0, 0, 1, 1], "score": 0.9,
                                         "probs": {"happy": 0.6, "sad": 0.4}}]}


@pytest.mark.parametrize(("content", "message"), [
    (None, "could not be read: no such file"),
    ("", "holds no frames"),
    ('{"frame": 0, "t": 0.0, "faces": []\n' + json.dumps(GOOD) + "\n", "line 1: not JSON"),
    ("[1, 2]\n", "line 1: expected a JSON object"),
    ('{"frame": "0", "t": 0.0, "faces": []}\n', "'frame' must be an integer"),
    ('{"frame": 0, "faces": []}\n', "'t' must be a number"),
    ('{"frame": 0, "t": 0.0, "faces": {}}\n', "'faces' must be a list"),
    ('{"frame": 0, "t": 0.0, "faces": [{"box_xyxy": [0, 0, 1, 1], "probs": {"a": 1}}]}\n', "face 'id'"),
    ('{"frame": 0, "t": 0.0, "faces": [{"id": 0, "box_xyxy": [0, 1], "probs": {"a": 1}}]}\n', "'box_xyxy'"),
    ('{"frame": 0, "t": 0.0, "faces": [{"id": 0, "box_xyxy": [0, 0, 1, 1], "probs": []}]}\n', "'probs'"),
    (json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "faces": [{**GOOD["faces"][0], "probs": {"happy": 1.0}}]})
     + "\n", "line 2: face 'probs' has labels"),
])
def test_bad_event_logs_are_named(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "bad.events.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        EventTable.from_jsonl(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("section", "message"), [
    ("episodes: {hysteresis: 1.5}", "episodes.hysteresis: must be in"),
    ("episodes: {min_duration_s: -1}", "episodes.min_duration_s: must be >= 0"),
    ("episodes: {max_gap_s: soon}", "'episodes.max_gap_s' must be a number"),
    ("episodes: {min_duration: 1}", "unknown config key 'episodes.min_duration'"),
])
def test_episode_settings_are_validated(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(section + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_episode_settings_load(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("episodes: {min_duration_s: 1, hysteresis: 0.2, max_gap_s: 0.5}\n")
    assert load_config(path).episodes == EpisodesConfig(min_duration_s=1.0, hysteresis=0.2, max_gap_s=0.5)
