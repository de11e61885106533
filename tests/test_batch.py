"""emostream batch: a folder of real clips and broken files -> event logs + one dataset; resume; Ray.

The clips are cut from the carphone sequence (one face each; the quad tiling has four).
Every CLI run works in tmp_path, never in the repository.
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

from stream.batch.inputs import find_inputs
from stream.errors import ConfigError
from tests.conftest import ffmpeg, run_cli

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")

_ENC = ("-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-an")


def _cut(src: Path, dst: Path, frames: int, size: str = "320:240") -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    ffmpeg("-i", str(src), "-vf", f"scale={size}", "-frames:v", str(frames), *_ENC, str(dst))
    return dst


@pytest.fixture(scope="module")
def archive(clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small archive: clips in nested folders, a still image, two broken files and a stray text file."""
    d = tmp_path_factory.mktemp("archive")
    _cut(clips["vga"], d / "day1" / "room_a.mp4", 40)
    _cut(clips["vga"], d / "day1" / "room_b.mp4", 30)
    _cut(clips["quad"], d / "day2" / "hall.mp4", 30, "640:360")  # four faces a frame
    _cut(clips["noface"], d / "day2" / "empty_room.mp4", 20)
    ffmpeg("-i", str(clips["vga"]), "-frames:v", "1", str(d / "day2" / "still.jpg"))
    (d / "day2" / "broken.mp4").write_bytes(b"not a video at all\n" * 50)
    (d / "day1" / "zero.mp4").write_bytes(b"")
    (d / "day1" / "notes.txt").write_text("not an input: folders take videos and images only\n")
    return d


def _events_faces(out: Path) -> dict[str, int]:
    """Faces per event log under ``out``, by the log's path relative to ``out``."""
    counts = {}
    for log in out.rglob("*.events.jsonl"):
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        counts[log.relative_to(out).as_posix()] = sum(len(r["faces"]) for r in lines)
    return counts


def _report(out: Path) -> dict:
    return json.loads((out / "job.json").read_text())


@pytest.fixture(scope="module")
def first_job(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """The archive processed once, in-process, with videos and CSV."""
    cwd = tmp_path_factory.mktemp("job")
    proc = run_cli("batch", str(archive), "--out", "out", "--video", "--csv", "--parallel", "3", "--no-progress",
                   cwd=cwd)
    return proc, cwd / "out"


def test_batch_writes_mirrored_outputs_and_one_dataset(first_job: tuple[subprocess.CompletedProcess, Path],
                                                       archive: Path) -> None:
    proc, out = first_job
    assert proc.returncode == 2, proc.stderr  # two inputs failed, the others finished
    assert "Traceback" not in proc.stderr
    report = _report(out)
    assert report["inputs"] == 7 and report["done"] == 5
    failed = {Path(f["input"]).name: f["reason"] for f in report["failed"]}
    assert set(failed) == {"broken.mp4", "zero.mp4"}
    assert "empty" in failed["zero.mp4"] and "broken.mp4" in failed["broken.mp4"]
    assert all("\n" not in reason for reason in failed.values())
    assert "failed: " + str(archive / "day2" / "broken.mp4") in proc.stderr
    # Outputs mirror the input tree.
    for rel in ("day1/room_a", "day1/room_b", "day2/hall", "day2/empty_room"):
        assert (out / f"{rel}.events.jsonl").is_file()
        assert (out / f"{rel}.annotated.mp4").is_file()
    assert (out / "day2" / "still.annotated.jpg").is_file()
    assert not list(out.rglob("*.partial*"))
    # One dataset: one row per face per frame, the same count as the event logs.
    faces = pd.read_parquet(out / "faces.parquet")
    logs = _events_faces(out)
    assert len(faces) == sum(logs.values()) == 40 + 30 + 4 * 30 + 0 + 1
    by_source = faces.groupby("source").size().to_dict()
    assert by_source == {"day1/room_a.mp4": 40, "day1/room_b.mp4": 30, "day2/hall.mp4": 120, "day2/still.jpg": 1}
    assert not faces.duplicated(["source", "frame", "track_id"]).any()
    probs = [c for c in faces.columns if c.startswith("prob_")]
    assert list(faces.columns[:10]) == ["source", "frame", "t_s", "track_id", "x1", "y1", "x2", "y2", "score",
                                        "label"]
    assert len(probs) == 7 and ((faces[probs].sum(axis=1) - 1).abs() < 0.01).all()
    hall = faces[faces.source == "day2/hall.mp4"]
    assert sorted(hall.track_id.unique()) == [0, 1, 2, 3]
    csv = pd.read_csv(out / "faces.csv")
    assert len(csv) == len(faces) and list(csv.columns) == list(faces.columns)
    # Per-video summary and per-track shares.
    videos = pd.read_parquet(out / "videos.parquet").set_index("source")
    assert videos.loc["day2/hall.mp4", ["frames", "faces", "tracks"]].tolist() == [30, 120, 4]
    assert videos.loc["day2/empty_room.mp4", ["frames", "faces"]].tolist() == [20, 0]
    assert videos.loc["day1/room_a.mp4", "duration_s"] == pytest.approx(40 / 29.97, abs=0.01)
    tracks = pd.read_parquet(out / "tracks.parquet")
    shares = [c for c in tracks.columns if c.startswith("share_")]
    assert ((tracks[shares].sum(axis=1) - 1).abs() < 0.01).all()
    assert tracks.groupby("source").faces.sum().to_dict() == {k: v for k, v in by_source.items()}


def test_rerun_skips_finished_inputs_and_keeps_the_dataset(first_job: tuple[subprocess.CompletedProcess, Path],
                                                           archive: Path) -> None:
    _, out = first_job
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.events.jsonl")}
    rows = len(pd.read_parquet(out / "faces.parquet"))
    proc = run_cli("batch", str(archive), "--out", str(out), "--video", "--no-progress", cwd=out.parent)
    assert proc.returncode == 2, proc.stderr
    report = _report(out)
    assert (report["skipped"], report["done"], len(report["failed"])) == (5, 0, 2)  # failed ones are retried
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.events.jsonl")} == before
    assert len(pd.read_parquet(out / "faces.parquet")) == rows


def test_all_good_inputs_exit_0_and_lists_and_globs_work(archive: Path, tmp_path: Path) -> None:
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# two clips\n{archive / 'day1' / 'room_b.mp4'}\n\n")
    proc = run_cli("batch", str(listing), str(archive / "day2" / "*.jpg"), "--out", "out", "--no-progress",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "day1" / "room_b.events.jsonl").is_file()
    assert not list((tmp_path / "out").rglob("*.annotated.*"))  # no --video: event logs only
    assert _report(tmp_path / "out")["done"] == 2


@pytest.mark.parametrize(("args", "message"), [
    (["nothing-here/*.mp4"], "no video or image found"),
    (["{clip}", "--parallel", "0"], "--parallel"),
    (["{clip}", "--gpus-per-worker", "-1"], "--gpus-per-worker"),
])
def test_bad_arguments_exit_2_with_one_line(args: list[str], message: str, archive: Path, tmp_path: Path) -> None:
    args = [a.format(clip=archive / "day1" / "room_b.mp4") for a in args]
    proc = run_cli("batch", *args, "--out", "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_find_inputs_mirrors_the_tree_and_skips_the_output_folder(archive: Path, tmp_path: Path) -> None:
    inputs, warnings = find_inputs([str(archive)])
    assert [i.rel for i in inputs] == ["day1/room_a.mp4", "day1/room_b.mp4", "day1/zero.mp4", "day2/broken.mp4",
                                       "day2/empty_room.mp4", "day2/hall.mp4", "day2/still.jpg"]
    assert warnings == []
    both, _ = find_inputs([str(archive / "day1"), str(archive / "day2" / "hall.mp4"), str(archive / "day1")])
    assert [i.rel for i in both] == ["day1/room_a.mp4", "day1/room_b.mp4", "day1/zero.mp4", "day2/hall.mp4"]
    same_stem = tmp_path / "a"
    same_stem.mkdir()
    (same_stem / "x.mp4").write_bytes(b"1")
    (same_stem / "x.jpg").write_bytes(b"1")
    (same_stem / "out").mkdir()
    (same_stem / "out" / "y.mp4").write_bytes(b"1")
    found, _ = find_inputs([str(same_stem)], exclude=same_stem / "out")
    assert [(i.rel, i.stem) for i in found] == [("x.jpg", "x.jpg"), ("x.mp4", "x.mp4")]
    with pytest.raises(ConfigError, match="no video or image"):
        find_inputs([str(tmp_path / "missing" / "*.mp4")])


def _markers(out: Path) -> dict[str, int]:
    done = out / ".job" / "done"
    # A marker being written is <key>.partial.json until it is renamed: not a finished input yet.
    return {p.name: p.stat().st_mtime_ns for p in done.glob("*.json")
            if not p.name.endswith(".partial.json")} if done.is_dir() else {}


def test_sigkilled_job_resumes_without_redoing_or_duplicating(clips: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(8):
        _cut(clips["vga"], src / f"clip{i}.mp4", 120)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "stream", "batch", str(src), "--out", str(out), "--parallel", "1", "--no-progress"]
    job = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while len(_markers(out)) < 2:
            assert job.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "no input finished in 90 s"
            time.sleep(0.02)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=10)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    done_before = _markers(out)
    assert 2 <= len(done_before) < 8, "the kill came too late to test a resume"
    logs_before = {p: p.stat().st_mtime_ns for p in out.rglob("*.events.jsonl")}
    proc = run_cli("batch", str(src), "--out", str(out), "--parallel", "1", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = _report(out)
    assert report["skipped"] == len(done_before) and report["done"] == 8 - len(done_before)
    after = _markers(out)
    assert {k: after[k] for k in done_before} == done_before  # finished inputs were not redone
    finished_logs = [p for p in logs_before if p.stat().st_mtime_ns == logs_before[p]]
    assert len(finished_logs) >= len(done_before)
    faces = pd.read_parquet(out / "faces.parquet")
    assert not faces.duplicated(["source", "frame", "track_id"]).any()
    assert faces.groupby("source").size().to_dict() == {f"clip{i}.mp4": 120 for i in range(8)}
    assert len(faces) == sum(_events_faces(out).values())
    assert not list(out.rglob("*.partial*")) and not list(out.rglob("*.recovered*"))


def test_the_next_input_joins_as_soon_as_one_ends(clips: dict[str, Path], tmp_path: Path) -> None:
    """--parallel 2 with one long input and four short ones: the short ones go through one slot while
    the long one holds the other (no group waits for its longest input), each committed when done."""
    src = tmp_path / "in"
    src.mkdir()
    ffmpeg("-stream_loop", "3", "-i", str(clips["vga"]), "-vf", "scale=320:240", "-frames:v", "480", *_ENC,
           str(src / "long.mp4"))
    for i in range(4):
        _cut(clips["noface"], src / f"short{i}.mp4", 20)
    out = tmp_path / "out"
    proc = run_cli("batch", str(src), "--out", str(out), "--parallel", "2", "--no-progress", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = _report(out)
    assert report["done"] == 5 and not report["failed"]
    done = {json.loads(p.read_text())["rel"]: p.stat().st_mtime_ns for p in (out / ".job" / "done").glob("*.json")}
    assert max(done[f"short{i}.mp4"] for i in range(4)) < done["long.mp4"]  # committed while the long one ran
    faces = pd.read_parquet(out / "faces.parquet")
    assert faces.groupby("source").size().to_dict() == {"long.mp4": 480}
    assert _events_faces(out)["long.events.jsonl"] == 480
    for i in range(4):
        assert len((out / f"short{i}.events.jsonl").read_text().splitlines()) == 20


def test_ctrl_c_exits_130_and_keeps_the_finished_inputs(clips: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "in"
    for i in range(6):
        _cut(clips["vga"], src / f"clip{i}.mp4", 120)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "stream", "batch", str(src), "--out", str(out), "--parallel", "1", "--no-progress"]
    job = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while not _markers(out):
            assert job.poll() is None, "the job ended before it could be interrupted"
            assert time.monotonic() < deadline, "no input finished in 90 s"
            time.sleep(0.02)
        job.send_signal(signal.SIGINT)
        _, stderr = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 130, stderr
    assert "Traceback" not in stderr and "run the same command again" in stderr
    report = _report(out)
    kept = len(_markers(out))
    assert 1 <= kept < 6 and report["done"] == kept
    assert len(report["interrupted"]) + report["not_started"] == 6 - kept
    faces = pd.read_parquet(out / "faces.parquet")  # the finished inputs' rows, each once
    assert faces.groupby("source").size().tolist() == [120] * kept


# --- Ray ---------------------------------------------------------------------------------------------


# ray_address: the session-wide local Ray of tests/conftest.py (shared with tests/test_fleet.py).


def _dataset(out: Path) -> pd.DataFrame:
    faces = pd.read_parquet(out / "faces.parquet")
    return faces.sort_values(["source", "frame", "track_id"]).reset_index(drop=True)


def test_ray_job_gives_the_same_dataset_as_in_process(first_job: tuple[subprocess.CompletedProcess, Path],
                                                      archive: Path, ray_address: str, tmp_path: Path) -> None:
    proc = run_cli("batch", str(archive), "--out", "out", "--no-progress", "--ray", ray_address, "--workers", "2",
                   "--parallel", "2", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr
    report = _report(tmp_path / "out")
    assert report["mode"].startswith("ray") and report["done"] == 5
    assert {Path(f["input"]).name for f in report["failed"]} == {"broken.mp4", "zero.mp4"}
    ray_faces, local_faces = _dataset(tmp_path / "out"), _dataset(first_job[1])
    keys = ["source", "frame", "track_id", "label"]
    pd.testing.assert_frame_equal(ray_faces[keys], local_faces[keys])
    # Which inputs share a detector batch differs between the runs (and with the inference workers'
    # timing): the detector's float kernels differ by ~1e-4 px with the batch, the crop's uint8 pixels
    # can round the other way, and the int8 classifier moves by up to ~0.02 on such a crop.
    probs = [c for c in ray_faces.columns if c.startswith("prob_")]
    numbers = [c for c in ray_faces.columns if c not in keys and c not in probs]
    pd.testing.assert_frame_equal(ray_faces[numbers], local_faces[numbers], atol=2e-3, rtol=0)
    pd.testing.assert_frame_equal(ray_faces[probs], local_faces[probs], atol=0.03, rtol=0)


def test_a_killed_ray_worker_is_replaced_and_nothing_is_lost(clips: dict[str, Path], ray_address: str,
                                                             tmp_path: Path) -> None:
    import ray

    from stream.batch.ray_workers import ACTOR_PREFIX
    from stream.cluster import NAMESPACE

    src = tmp_path / "in"
    for i in range(4):
        _cut(clips["vga601"], src / f"long{i}.mp4", 300)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "stream", "batch", str(src), "--out", str(out), "--ray", ray_address,
           "--workers", "2", "--parallel", "1", "--no-progress"]
    job = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        names: list[str] = []
        while not names:
            assert job.poll() is None, job.stderr.read() if job.stderr else ""
            assert time.monotonic() < deadline, "no batch worker appeared in 120 s"
            names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                           if a["name"].startswith(ACTOR_PREFIX))
            time.sleep(0.05)
        victim = ray.get_actor(names[0], namespace=NAMESPACE)
        pid = ray.get(victim.pid.remote(), timeout=120)  # answers once the models are loaded, mid-job
        assert not _markers(out), "the job finished an input before the kill: make the clips longer"
        os.kill(pid, signal.SIGKILL)
        _, stderr = job.communicate(timeout=240)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 0, stderr
    report = _report(out)
    assert report["workers_replaced"] >= 1 and report["done"] == 4 and not report["failed"]
    faces = pd.read_parquet(out / "faces.parquet")
    assert faces.groupby("source").size().to_dict() == {f"long{i}.mp4": 300 for i in range(4)}
    assert not faces.duplicated(["source", "frame", "track_id"]).any()
    assert len(faces) == sum(_events_faces(out).values())
