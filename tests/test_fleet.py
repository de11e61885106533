"""Camera fleets on Ray (``emostream run --sources cams.yaml --ray``): paced clips play as live cameras.

Every run connects to the session's local Ray (tests/conftest.py ``ray_address``, 2 CPUs) and
works in tmp_path with absolute paths, never in the repository.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stream import fleet
from stream.capture.spec import SourceSpec
from stream.fleet import FleetTap
from stream.records import Frame, FrameResult
from stream.render.record import EventLog
from stream.summary import RunSummary
from tests.cli_run import interrupt, running_cli
from tests.conftest import run_cli

LABELS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear")


def _sources(tmp_path: Path, clip: Path) -> Path:
    cams = tmp_path / "cams.yaml"
    cams.write_text("sources:\n"
                    f"  - {{name: camA, path: '{clip}', paced: true}}\n"
                    f"  - {{name: camB, path: '{clip}', paced: true}}\n")
    return cams


def _records(path: Path) -> list[dict]:
    """The complete lines of an event log (also one still being written)."""
    if not path.is_file():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def _wait_for(what: str, check, proc: subprocess.Popen, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert proc.poll() is None, f"the fleet ended before {what}: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.1)


# -- Delivery between actor and driver, without Ray (the Ray runs below check it end to end) -------------


def _feed(tap: FleetTap, indexes: range, i: int = 0) -> None:
    """The actor pipeline's results for frames ``indexes`` (this run's numbering) of its camera ``i``."""
    image = np.zeros((4, 4, 3), np.uint8)
    for index in indexes:
        tap.on_result(FrameResult(Frame("cam", index, index / 30.0, 0.0, image, i), []),
                      RunSummary(source="cam", source_id=i))


def _frames(answer: dict) -> list[int]:
    return [r["frame"] for r in answer["records"]]


def test_the_actor_keeps_records_until_the_driver_has_written_them(monkeypatch: pytest.MonkeyPatch) -> None:
    tap = FleetTap([7], ["cam"], LABELS)
    _feed(tap, range(5))
    assert _frames(tap.take()) == [0, 1, 2, 3, 4]
    assert _frames(tap.take()) == [0, 1, 2, 3, 4]  # the driver did not say it wrote them: sent again
    assert _frames(tap.take({7: 2})) == [3, 4]
    _feed(tap, range(5, 7))
    assert _frames(tap.take({7: 4})) == [5, 6]
    assert tap.take({7: 6})["records"] == [] and tap.take()["lost"] == {}
    # A driver far behind: the buffer keeps the newest records, the dropped ones are counted per camera.
    monkeypatch.setattr(fleet, "BUFFER_RECORDS", 3)
    _feed(tap, range(7, 12))
    answer = tap.take({7: 6})
    assert _frames(answer) == [9, 10, 11] and answer["lost"] == {7: 2}


def test_a_new_actor_takes_each_camera_from_the_first_frame_its_log_lacks() -> None:
    # A file is played again from its start: the frames the log has are skipped, the others keep their index.
    tap = FleetTap([3, 4], ["file", "cam"], LABELS, resume_from=[5, 5], replayable=[True, False])
    _feed(tap, range(8), 0)
    # A live camera's new frames are numbered on from there.
    _feed(tap, range(3), 1)
    records = tap.take()["records"]
    assert [(r["source_id"], r["frame"]) for r in records] == [(3, 5), (3, 6), (3, 7), (4, 5), (4, 6), (4, 7)]
    assert [r["t"] for r in records[:3]] == [round(i / 30.0, 4) for i in (5, 6, 7)]  # the file's own media time
    assert tap.replayed == [5, 0]
    # Capture counts in the log's numbering: frames read again and dropped before inference are not the log's.
    tap.replayed[0] = 4  # one of the replayed frames 0..4 was dropped (a paced file is live)
    assert tap.counts(0, captured=8, dropped=2) == (8, 1)
    assert tap.counts(1, captured=3, dropped=1) == (8, 1)


def _camera(tmp_path: Path, spec: str) -> fleet._Camera:
    cam = fleet._Camera(0, SourceSpec(spec, name="cam"), RunSummary(source="cam", source_id=0),
                        replayable=fleet.replayable(SourceSpec(spec)))
    cam.events = EventLog(tmp_path / f"{cam.gid}-{cam.replayable}.events.jsonl")
    cam.begin_run()
    return cam


def _deliver(cam: fleet._Camera, tap: FleetTap) -> None:
    """One poll of the driver: acknowledge what the log has, write what comes back."""
    for record in tap.take({cam.gid: cam.acked})["records"]:
        cam.write(record)


@pytest.mark.parametrize("spec", ["clip.mp4", "rtsp://cam.local/live"])
def test_the_driver_writes_each_frame_once_across_a_dead_actor(tmp_path: Path, spec: str) -> None:
    cam = _camera(tmp_path, spec)
    first = FleetTap([0], ["cam"], LABELS, replayable=[cam.replayable])
    _feed(first, range(10))
    answer = first.take({0: cam.acked})
    for record in answer["records"]:  # an answer handled twice (sent again) writes nothing twice
        cam.write(dict(record))
    for record in answer["records"]:
        cam.write(dict(record))
    _feed(first, range(10, 15))  # frames 10..14 were never sent: the actor dies with them
    cam.end_run(None)
    cam.resumed = True
    second = FleetTap([0], ["cam"], LABELS, resume_from=[cam.next_frame], replayable=[cam.replayable])
    cam.begin_run()
    _feed(second, range(20) if cam.replayable else range(10))  # a file from its start; a camera's new frames
    _deliver(cam, second)
    _deliver(cam, second)  # nothing new: nothing written
    cam.events.close()
    lines = [json.loads(line) for line in cam.events.path.read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(20))
    assert cam.summary.frames_processed == 20 and cam.duplicates == 10 and cam.dropped == 0
    resumed = [r for r in lines if r.get("resumed")]
    assert len(resumed) == 1 and resumed[0]["frame"] == 10 and resumed[0]["gap_s"] >= 0
    if cam.replayable:  # the file's own media time; a live camera's t goes on from the last one
        assert [r["t"] for r in lines] == [round(i / 30.0, 4) for i in range(20)]
    else:
        assert resumed[0]["t"] >= lines[9]["t"]


def test_fleet_refuses_an_annotated_video(tmp_path: Path, clips: dict[str, Path]) -> None:
    proc = run_cli("run", str(clips["vga"]), "--ray", "--output", str(tmp_path / "x.mp4"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "annotated video is off for fleets" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_two_paced_cameras_on_ray_log_on_the_driver(tmp_path: Path, clips: dict[str, Path],
                                                    ray_address: str) -> None:
    out = tmp_path / "out"
    proc = run_cli("-v", "run", "--sources", str(_sources(tmp_path, clips["vga"])), "--ray", ray_address,
                   "--sources-per-worker", "1", "--max-seconds", "8", "--out-dir", str(out), "--no-progress",
                   cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2 camera(s) on 2 Ray worker(s)" in proc.stderr and "annotated video is off" in proc.stderr
    assert "health: [0] camA on " in proc.stderr  # -v: a health line per camera every 5 s
    for i, name in enumerate(("camA", "camB")):
        records = _records(out / f"{name}.events.jsonl")
        assert len(records) > 20, f"{name}: {len(records)} frames"
        assert {r["source_id"] for r in records} == {i}
        frames = [r["frame"] for r in records]
        assert frames == sorted(set(frames))
        assert sum(len(r["faces"]) for r in records) >= len(records) * 0.9  # a face in (nearly) every frame
        assert not any("resumed" in r for r in records)
        assert f"[{i}] wrote: {out / f'{name}.events.jsonl'}" in proc.stderr
    assert not list(out.glob("*.partial*")) and not list(out.glob("*.mp4"))


def test_a_killed_worker_is_replaced_and_its_camera_loses_no_frame(tmp_path: Path, clips: dict[str, Path],
                                                                  ray_address: str) -> None:
    """A worker killed mid-run: its camera (a paced file) resumes on a new one at the first frame its log
    lacks; the log has every frame index exactly once, in order, each the clip's frame (same media time
    and face as the other camera's log, which plays the same clip without a restart)."""
    import ray

    from stream.cluster import NAMESPACE
    from stream.fleet import ACTOR_PREFIX
    from stream.render.outputs import partial_path

    out = tmp_path / "out"
    config = tmp_path / "config.yaml"
    # A paced file is live (the newest frame wins): a long queue, so a busy machine drops no frame either.
    config.write_text("capture:\n  live_buffer: 64\n")
    cmd = [sys.executable, "-m", "stream", "run", "--sources", str(_sources(tmp_path, clips["vga"])), "--ray",
           ray_address, "--sources-per-worker", "1", "--max-seconds", "90", "--out-dir", str(out), "--no-progress",
           "--config", str(config)]
    fleet_proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial_b = partial_path(out / "camB.events.jsonl")  # the log while it is written
    try:
        _wait_for("camB frames", lambda: len(_records(partial_b)) >= 10, fleet_proc)

        def camb_actor():  # type: ignore[no-untyped-def]
            for entry in ray.util.list_named_actors(all_namespaces=True):
                if entry["name"].startswith(ACTOR_PREFIX):
                    actor = ray.get_actor(entry["name"], namespace=NAMESPACE)
                    if ray.get(actor.cameras.remote(), timeout=30) == ["camB"]:
                        return actor
            return None

        victim = camb_actor()
        assert victim is not None
        pid = ray.get(victim.pid.remote(), timeout=30)

        def held_unwritten():  # type: ignore[no-untyped-def]
            """The frames the actor holds (a poll that acknowledges nothing takes nothing) past the log's end,
            once there are 5 (the driver polls every 0.5 s: the kill comes well before its next poll)."""
            held = [r["frame"] for r in ray.get(victim.poll.remote({}), timeout=30)["records"]]
            unwritten = [f for f in held if f >= len(_records(partial_b))]
            return unwritten if len(unwritten) >= 5 else None

        held = _wait_for("records held in camB's actor", held_unwritten, fleet_proc)
        os.kill(pid, signal.SIGKILL)  # with the records it processed since the driver's last poll
        t_kill = time.time()
        before = len(_records(partial_b))
        # The camera resumes on a new actor: its log goes on, past the frames the dead one had not sent.
        _wait_for("resumed camB frames", lambda: any(r.get("resumed") for r in _records(partial_b)[before - 1:])
                  and len(_records(partial_b)) >= before + 60, fleet_proc, timeout_s=90)
        fleet_proc.send_signal(signal.SIGTERM)
        _, stderr = fleet_proc.communicate(timeout=60)
    finally:
        if fleet_proc.poll() is None:
            fleet_proc.kill()
            fleet_proc.wait()
    assert fleet_proc.returncode == 130, stderr  # SIGTERM: every actor stopped, the logs finalised
    assert "interrupted: event logs finalised" in stderr and "Traceback" not in stderr
    assert "[1] restarts: 1" in stderr and "[0] restarts" not in stderr
    assert "lost" not in stderr
    assert not list(out.glob("*.partial*"))
    camb = _records(out / "camB.events.jsonl")
    cama = _records(out / "camA.events.jsonl")
    # Every frame index once, in order, none missing: the ones the dead actor had not sent came again.
    assert [r["frame"] for r in camb] == list(range(len(camb)))
    assert [r["frame"] for r in cama] == list(range(len(cama)))
    assert f"[1] frames: {len(camb)} processed" in stderr and f"[0] frames: {len(cama)} processed" in stderr
    assert ", 0 dropped;" in stderr.split("[1] frames:")[1].splitlines()[0]
    resumed = [i for i, r in enumerate(camb) if r.get("resumed")]
    assert len(resumed) == 1 and before <= resumed[0] < len(camb) - 50
    lost_with_the_actor = [f for f in held if f >= resumed[0]]  # never sent: played again by the new actor
    assert lost_with_the_actor and lost_with_the_actor[-1] < len(camb)
    first = camb[resumed[0]]
    assert first["gap_s"] > 0.5  # a new actor loads the models and plays the clip again up to there
    assert time.time() - t_kill > first["gap_s"]
    assert not any("resumed" in r for r in cama)
    # Frame i of camB's log is the clip's frame i, before and after the restart: its media time and its
    # face's box are those of frame i in camA's log (the same clip, never restarted).
    common = min(len(cama), len(camb))
    assert common > resumed[0] + 50
    assert [r["t"] for r in camb[:common]] == [r["t"] for r in cama[:common]]
    for a, b in zip(cama[:common], camb[:common], strict=True):
        if len(a["faces"]) == len(b["faces"]) == 1:
            assert np.allclose(a["faces"][0]["box_xyxy"], b["faces"][0]["box_xyxy"], atol=2.0), (a, b)
    print(f"camB: {len(camb)} frames, resumed at frame {resumed[0]} ({before} in its log at the kill; "
          f"frames {lost_with_the_actor[0]}..{lost_with_the_actor[-1]} were held unsent by the killed actor), "
          f"gap {first['gap_s']} s; camA: {len(cama)} frames")


def test_a_fleet_reloads_its_sources_file_on_sighup(tmp_path: Path, clips: dict[str, Path],
                                                    ray_address: str) -> None:
    """SIGHUP with an edited sources file: the camera no longer listed is removed from its actor (its log
    finalised at once), the new one starts on a new actor, the one left alone goes on undisturbed; a bad
    file changes nothing."""
    from stream.render.outputs import partial_path

    out, cams = tmp_path / "out", tmp_path / "cams.yaml"

    def write(entries: dict[str, Path]) -> None:
        cams.write_text("sources:\n" + "".join(f"  - {{name: {name}, path: '{clip}', paced: true}}\n"
                                               for name, clip in entries.items()))

    write({"camA": clips["vga"], "camB": clips["vga"]})
    stderr = tmp_path / "run.stderr"
    with running_cli(["run", "--sources", str(cams), "--ray", ray_address, "--sources-per-worker", "2",
                      "--max-seconds", "150", "--out-dir", str(out), "--no-progress"], tmp_path, stderr) as proc:
        _wait_for("camB frames", lambda: len(_records(partial_path(out / "camB.events.jsonl"))) >= 10, proc,
                  timeout_s=90)
        write({"camA": clips["vga"], "camC": clips["noface"]})
        proc.send_signal(signal.SIGHUP)
        _wait_for("the reload line", lambda: "reloaded: added camC; removed camB; 1 unchanged" in stderr.read_text(),
                  proc)
        _wait_for("camB's final log", lambda: (out / "camB.events.jsonl").is_file(), proc)  # while the run goes on
        _wait_for("camC frames", lambda: len(_records(partial_path(out / "camC.events.jsonl"))) >= 10, proc,
                  timeout_s=90)
        cams.write_text("sources: [unclosed")
        proc.send_signal(signal.SIGHUP)
        _wait_for("the warning", lambda: "not reloaded" in stderr.read_text(), proc)
        camc = len(_records(partial_path(out / "camC.events.jsonl")))
        _wait_for("camC going on", lambda: len(_records(partial_path(out / "camC.events.jsonl"))) > camc + 10, proc)
        interrupt(proc, stderr, 90)
    text = stderr.read_text()
    assert "Traceback" not in text
    assert len([line for line in text.splitlines() if "not reloaded" in line]) == 1
    assert "[1] warning: removed" in text and "[2] wrote:" in text
    for i, name in enumerate(("camA", "camB", "camC")):
        records = _records(out / f"{name}.events.jsonl")
        frames = [r["frame"] for r in records]
        assert len(frames) >= 10 and frames == sorted(set(frames)), name
        assert {r["source_id"] for r in records} == {i}
        assert not any("resumed" in r for r in records)  # nobody's actor was restarted
    assert not list(out.glob("*.partial*"))
