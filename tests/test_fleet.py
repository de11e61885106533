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

import pytest

from tests.conftest import run_cli

pytest.importorskip("ray", reason="ray is not installed (pip install 'emostream[ray]')")


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


def test_a_killed_worker_is_replaced_and_its_camera_resumes(tmp_path: Path, clips: dict[str, Path],
                                                           ray_address: str) -> None:
    import ray

    from stream.batch.ray_workers import NAMESPACE
    from stream.fleet import ACTOR_PREFIX
    from stream.render.outputs import partial_path

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "stream", "run", "--sources", str(_sources(tmp_path, clips["vga"])), "--ray",
           ray_address, "--sources-per-worker", "1", "--max-seconds", "90", "--out-dir", str(out), "--no-progress"]
    fleet = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    partial_b = partial_path(out / "camB.events.jsonl")  # the log while it is written
    try:
        _wait_for("camB frames", lambda: len(_records(partial_b)) >= 10, fleet)

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
        before = len(_records(partial_b))
        os.kill(pid, signal.SIGKILL)
        t_kill = time.time()
        # The camera resumes on a new actor: its log goes on.
        _wait_for("resumed camB frames",
                  lambda: len([r for r in _records(partial_b)[before:] if not r.get("resumed")]) >= 10, fleet)
        fleet.send_signal(signal.SIGTERM)
        _, stderr = fleet.communicate(timeout=60)
    finally:
        if fleet.poll() is None:
            fleet.kill()
            fleet.wait()
    assert fleet.returncode == 130, stderr  # SIGTERM: every actor stopped, the logs finalised
    assert "interrupted: event logs finalised" in stderr and "Traceback" not in stderr
    assert "[1] restarts: 1" in stderr and "[0] restarts" not in stderr
    assert not list(out.glob("*.partial*"))
    camb = _records(out / "camB.events.jsonl")
    resumed = [i for i, r in enumerate(camb) if r.get("resumed")]
    assert len(resumed) == 1 and before <= resumed[0] < len(camb) - 5
    first = camb[resumed[0]]
    assert first["gap_s"] > 0.5  # a new actor loads the models and opens the camera again
    assert camb[resumed[0]]["t"] >= camb[resumed[0] - 1]["t"] + first["gap_s"] - 0.1
    frames = [r["frame"] for r in camb]
    assert frames == sorted(set(frames))  # numbering goes on across the restart
    assert time.time() - t_kill > first["gap_s"]
    cama = _records(out / "camA.events.jsonl")
    assert len(cama) > len(camb) and not any("resumed" in r for r in cama)
