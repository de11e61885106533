"""Bad input to every command (issue 19): one line on stderr, exit 2, no traceback, within seconds and
bounded memory, and nothing that was there before is changed.

Each row of :data:`CASES` builds its input in ``tmp_path`` (which also holds an earlier output the
command must not touch), runs ``python -m stream ...`` in a subprocess and checks all of that.
The neighbours of the issue's rows follow: the same fault reached through another command or key.
Rows where the input is valid (a symlinked batch output, a deleted output, Ctrl-C, a loopback
address other than 127.0.0.1, a log with hundreds of tracks) check that it now works.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

SAMPLE = REPO / "stream" / "assets" / "carphone_640x480.mp4"

#: A few hundred bytes that expand to 9**8 (43 million) values.
BOMB = "".join(f"{c}: &{c} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
               for p, c in zip(["", "a", "b", "c", "d", "e", "f", "g"], "abcdefgh", strict=True))

#: Generous bounds for a 2-core machine shared with other test runs: a hang or a bomb blows far past them.
TIME_LIMIT_S = 60.0
RSS_LIMIT_MB = 2500


@dataclass
class Result:
    code: int
    stderr: str
    seconds: float
    max_rss_mb: float


def run_stream(*args: str, cwd: Path, timeout: float = TIME_LIMIT_S, max_file_bytes: int | None = None) -> Result:
    """``python -m stream ARGS``: exit code, stderr, wall time and peak memory of that process alone."""
    err_path = cwd / f".stderr-{time.monotonic_ns()}"
    with err_path.open("w") as err:
        t0 = time.monotonic()
        def limit() -> None:  # a file larger than this fails to write (EFBIG), like a full disk
            if max_file_bytes is not None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

        proc = subprocess.Popen([sys.executable, "-m", "stream", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=err, stdin=subprocess.DEVNULL, preexec_fn=limit)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > timeout:
                proc.kill()
                proc.wait()
                pytest.fail(f"emostream {' '.join(args)[:200]} did not end within {timeout} s")
            time.sleep(0.05)  # polling a child process: there is no event to wait on
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = err_path.read_text(errors="replace")
    err_path.unlink()
    return Result(proc.returncode, text, time.monotonic() - t0, usage.ru_maxrss / 1024)


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its content (special files by kind)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink() or not path.exists():
            out[rel] = "link"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif not path.is_dir():
            out[rel] = "special"
    return out


# --- inputs ------------------------------------------------------------------------------------------


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _deep(prefix: str = "") -> str:
    return prefix + "[" * 20_000 + "]" * 20_000 + "\n"


def _sources(t: Path, body: str) -> Path:
    return _write(t / "cams.yaml", body.replace("CLIP", str(SAMPLE)))


def _log_line(frame: int, faces: list[dict]) -> str:
    return json.dumps({"source": "clip.mp4", "frame": frame, "t": frame / 30, "faces": faces}) + "\n"


def _face(track: int) -> dict:
    return {"id": track, "score": 0.9, "box_xyxy": [10, 10, 50, 50], "probs": {"happy": 0.7, "sad": 0.3}}


def _earlier_report(t: Path) -> Path:
    """An earlier report folder, with report.html a *folder* (so the new one cannot be published)."""
    out = t / "clip.report"
    _write(out / "timelines.png", b"\x89PNG earlier")
    _write(out / "episodes.jsonl", '{"earlier": true}\n')
    (out / "report.html").mkdir()
    _write(out / "report.html" / "keep.txt", "earlier")
    return out


Args = Callable[[Path], list[str]]


@dataclass(frozen=True)
class Case:
    id: str
    args: Args
    message: str


CASES = [
    # --config (run, and the same loader for batch, report, serve)
    Case("config-alias-bomb", lambda t: ["run", "--config", str(_write(
        t / "c.yaml", BOMB + "runtime:\n  batch_size: *h\n"))], "alias bomb"),
    Case("config-alias-bomb-key", lambda t: ["run", "--config", str(_write(t / "c.yaml", BOMB + "*h : 1\n"))],
         "alias bomb"),
    Case("config-deep", lambda t: ["run", "--config", str(_write(t / "c.yaml", _deep("runtime: ")))],
         "nested deeper than"),
    Case("config-fifo", lambda t: ["run", "--config", str(_fifo(t / "c.yaml"))], "FIFO (named pipe), not a file"),
    Case("config-dev-zero", lambda t: ["run", "--config", "/dev/zero"], "character device, not a file"),
    Case("config-directory", lambda t: ["run", "--config", str(t)], "a directory, not a file"),
    Case("config-binary", lambda t: ["run", "--config", str(_write(t / "c.yaml", b"\xff\xfe\x00binary"))],
         "not a text (UTF-8) file"),
    Case("config-long-value", lambda t: ["run", "--config", str(_write(t / "c.yaml", "runtime:\n  batch_size: "
                                                                       + "x" * 200_000 + "\n"))],
         "'runtime.batch_size' must be an integer"),
    Case("config-huge-int", lambda t: ["run", "--config", str(_write(t / "c.yaml", "runtime:\n  batch_size: "
                                                                     + "9" * 5000 + "\n"))], "not valid YAML"),
    Case("config-too-large", lambda t: ["run", "--config", str(_write(t / "c.yaml", "#" * (2 << 20)))],
         "larger than"),
    Case("batch-config-bomb", lambda t: ["batch", str(SAMPLE), "--out", str(t / "out"), "--config",
                                         str(_write(t / "c.yaml", BOMB))], "alias bomb"),
    Case("report-config-deep", lambda t: ["report", str(_write(t / "e.jsonl", _log_line(0, []))), "--config",
                                          str(_write(t / "c.yaml", _deep()))], "nested deeper than"),
    Case("serve-config-fifo", lambda t: ["serve", "--port", "0", "--config", str(_fifo(t / "c.yaml"))], "FIFO"),
    # --sources
    Case("sources-alias-bomb-name", lambda t: ["run", "--sources", str(_sources(
        t, BOMB + "sources:\n  - path: CLIP\n    name: *h\n"))], "alias bomb"),
    Case("sources-alias-bomb-max-frames", lambda t: ["run", "--sources", str(_sources(
        t, BOMB + "sources:\n  - path: CLIP\n    max_frames: *h\n"))], "alias bomb"),
    Case("sources-name-long-list", lambda t: ["run", "--sources", str(_sources(
        t, "sources:\n  - path: CLIP\n    name: [" + ", ".join(["xxxxxxxxxx"] * 1000) + "]\n"))],
         "'name' must be a string"),
    Case("sources-dev-zero", lambda t: ["run", "--sources", "/dev/zero"], "character device, not a file"),
    Case("sources-fifo", lambda t: ["run", "--sources", str(_fifo(t / "cams.yaml"))], "FIFO (named pipe)"),
    Case("sources-deep", lambda t: ["run", "--sources", str(_write(t / "cams.yaml", _deep("sources: ")))],
         "nested deeper than"),
    Case("sources-events-int", lambda t: ["run", "--sources", str(_sources(
        t, "sources:\n  - path: CLIP\n    events: 5\n"))], "source 1: 'events' must be a path, got 5 (int)"),
    Case("sources-output-list", lambda t: ["run", "--sources", str(_sources(
        t, "sources:\n  - path: CLIP\n    output: [1, 2]\n"))], "'output' must be a path"),
    Case("sources-path-bool", lambda t: ["run", "--sources", str(_sources(t, "sources:\n  - path: true\n"))],
         "'path' must be a path"),
    Case("sources-name-escapes", lambda t: ["run", "--out-dir", str(t / "out"), "--sources", str(_sources(
        t, "sources:\n  - path: CLIP\n    name: ../../x\n"))], "'name' must be a plain file name"),
    Case("sources-name-control", lambda t: ["run", "--sources", str(_sources(
        t, 'sources:\n  - path: CLIP\n    name: "a\\x1b[2Jb"\n'))], "'name' must be a plain file name"),
    Case("sources-too-many", lambda t: ["run", "--out-dir", str(t / "out"), "--max-frames", "2", "--sources",
                                        str(_sources(t, "sources:\n" + "  - CLIP\n" * 200))],
         "200 sources in one process: more than capture.max_sources (64)"),
    Case("serve-sources-name-escapes", lambda t: ["serve", "--port", "0", "--sources", str(_sources(
        t, "sources:\n  - path: CLIP\n    name: ../x\n"))], "'name' must be a plain file name"),
    # report
    Case("report-fifo", lambda t: ["report", str(_fifo(t / "e.events.jsonl"))], "FIFO (named pipe)"),
    Case("report-dev-zero", lambda t: ["report", "/dev/zero", "--out", str(t / "r")], "character device"),
    Case("report-directory", lambda t: ["report", str(t)], "a directory, not a file"),
    Case("report-deep-line", lambda t: ["report", str(_write(t / "e.events.jsonl", _deep()))],
         "line 1: nested too deeply"),
    Case("report-bad-line", lambda t: ["report", str(_write(t / "e.events.jsonl", _log_line(0, []) + "{oops\n"))],
         "line 2: not JSON"),
    Case("report-long-value", lambda t: ["report", str(_write(t / "e.events.jsonl", json.dumps(
        {"frame": "x" * 100_000, "t": 0, "faces": []}) + "\n"))], "'frame' must be an integer"),
    Case("report-out-html-is-a-folder", lambda t: ["report", str(_write(t / "clip.events.jsonl", "".join(
        _log_line(i, [_face(1)]) for i in range(30)))), "--out", str(_earlier_report(t))],
         "report.html' could not be written: it is a directory"),
    # batch
    Case("batch-ray-nothing-listens", lambda t: ["batch", str(SAMPLE), "--out", str(t / "out"), "--ray",
                                                 "127.0.0.1:1", "--no-progress"], "--ray: cannot reach Ray"),
    Case("batch-list-binary", lambda t: ["batch", str(_write(t / "inputs.txt", b"\xff\xfe\x00")), "--out",
                                         str(t / "out")], "input list"),
    Case("batch-parallel-over-cap", lambda t: ["batch", str(SAMPLE), "--out", str(t / "out"), "--parallel", "100",
                                               "--no-progress"], "more than capture.max_sources"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(case: Case, tmp_path: Path) -> None:
    earlier = _write(tmp_path / "earlier" / "clip.events.jsonl", _log_line(0, [_face(0)]))
    args = case.args(tmp_path)
    before = snapshot(tmp_path)
    result = run_stream(*args, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("emostream: error: ") and case.message in lines[0], lines[0]
    assert len(lines[0]) < 600, lines[0][:600]  # a user value is quoted as a short excerpt
    assert result.max_rss_mb < RSS_LIMIT_MB, f"{result.max_rss_mb:.0f} MB"
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing there before was changed
    # Nothing new under a final name (a batch job's own bookkeeping folder aside).
    new = [k for k in after if k not in before and not k.startswith("out/.job/")]
    assert new == [], new
    assert earlier.read_text() == _log_line(0, [_face(0)])


def test_ray_unreachable_gives_up_within_ray_timeout_s_and_sigterm_stops_the_wait(tmp_path: Path) -> None:
    """Something listens but never answers as Ray: bounded by ray.timeout_s; SIGTERM ends the wait."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        config = _write(tmp_path / "c.yaml", "ray:\n  timeout_s: 3\n")
        result = run_stream("batch", str(SAMPLE), "--out", str(tmp_path / "out"), "--ray", address,
                            "--config", str(config), "--no-progress", cwd=tmp_path)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.code == 2 and len(lines) == 1, result.stderr
        assert "within 3 s (ray.timeout_s)" in lines[0]
        assert result.seconds < 30

        err = (tmp_path / "stderr").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "stream", "batch", str(SAMPLE), "--out",
                                 str(tmp_path / "out2"), "--ray", address, "--no-progress"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 30
        while not (tmp_path / "out2" / ".job").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the job folder is made just before Ray is asked
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 130
        assert time.monotonic() - t0 < 10
        err.close()
        assert "Traceback" not in (tmp_path / "stderr").read_text()


def _batch(t: Path, *args: str) -> Result:
    return run_stream("batch", *args, "--no-progress", cwd=t, timeout=240)


def test_batch_output_symlinked_into_the_inputs_is_not_read_back(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    (inputs / "results").mkdir(parents=True)
    os.symlink(SAMPLE, inputs / "a.mp4")
    (tmp_path / "outlink").symlink_to(inputs / "results")
    for _ in range(3):
        result = _batch(tmp_path, str(inputs), "--out", str(tmp_path / "outlink"), "--video", "--max-frames", "5")
        assert result.code == 0, result.stderr
    names = sorted(p.name for p in (inputs / "results").iterdir())
    assert "a.annotated.mp4" in names and not any("annotated.annotated" in n for n in names)
    assert json.loads((inputs / "results" / "job.json").read_text())["inputs"] == 1


def test_batch_redoes_a_finished_input_whose_output_is_gone_or_changed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _batch(tmp_path, str(SAMPLE), "--out", str(out), "--max-frames", "5").code == 0
    log = out / "carphone_640x480.events.jsonl"
    log.unlink()
    result = _batch(tmp_path, str(SAMPLE), "--out", str(out), "--max-frames", "5")
    assert result.code == 0 and "1 done now, 0 already done" in result.stderr, result.stderr
    assert log.is_file()
    log.write_text(log.read_text()[: len(log.read_text()) // 2])  # cut short by hand
    result = _batch(tmp_path, str(SAMPLE), "--out", str(out), "--max-frames", "5")
    assert "1 done now, 0 already done" in result.stderr, result.stderr
    assert _batch(tmp_path, str(SAMPLE), "--out", str(out), "--max-frames", "5").stderr.count("1 already done") == 1


def test_batch_ctrl_c_publishes_finished_inputs_only(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b", "c", "d"):
        os.symlink(SAMPLE, inputs / f"{name}.mp4")
    out = tmp_path / "out"
    err = (tmp_path / "stderr").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "stream", "batch", str(inputs), "--out", str(out),
                             "--parallel", "1", "--no-progress"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=err)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not list((out / ".job" / "done").glob("*.json")):
        time.sleep(0.1)  # until one input is finished (its marker is the commit point)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    err.close()
    job = json.loads((out / "job.json").read_text())
    done = job["done"]
    assert done >= 1 and (job["interrupted"] or job["not_started"])
    published = sorted(p.name for p in out.glob("*.events.jsonl"))
    assert len(published) == done, (published, job)  # every final name is a finished input
    for log in published:
        assert len((out / log).read_text().splitlines()) == 120  # whole
    result = _batch(tmp_path, str(inputs), "--out", str(out))
    assert result.code == 0, result.stderr
    assert len(list(out.glob("*.events.jsonl"))) == 4 and not list(out.glob("*.partial.*"))


def test_report_of_a_log_with_many_tracks_is_bounded_and_says_so(tmp_path: Path) -> None:
    rng = random.Random(7)
    lines = []
    for frame in range(600):
        faces = [dict(_face(frame // 20 * 8 + k), probs={"happy": (p := rng.random()), "sad": 1 - p})
                 for k in range(8)]
        lines.append(_log_line(frame, faces))
    log = _write(tmp_path / "many.events.jsonl", "".join(lines))  # 240 tracks
    result = run_stream("report", str(log), cwd=tmp_path, timeout=240)
    assert result.code == 0, result.stderr
    assert "over 240 track(s)" in result.stderr
    folder = tmp_path / "many.report"
    assert len(list(folder.glob("track-*.png"))) == 50
    page = (folder / "report.html").read_text()
    assert "190 more track(s)" in page and "the 50 seen in most frames are drawn" in page
    assert len((folder / "episodes.jsonl").read_text().splitlines()) >= 240


def test_report_that_cannot_be_written_leaves_the_earlier_report_whole(tmp_path: Path) -> None:
    log = _write(tmp_path / "clip.events.jsonl", "".join(_log_line(i, [_face(1), _face(2)]) for i in range(90)))
    first = run_stream("report", str(log), cwd=tmp_path, timeout=240)
    assert first.code == 0, first.stderr
    folder = tmp_path / "clip.report"
    before = snapshot(folder)
    assert "report.html" in before and "timelines.png" in before
    (tmp_path / "clip.events.jsonl").write_text("".join(_log_line(i, [_face(3)]) for i in range(60)))
    # Every file over 20 KB fails to write (EFBIG), as on a full disk: the PNGs and the page do.
    result = run_stream("report", str(log), cwd=tmp_path, timeout=240, max_file_bytes=20_000)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == 2 and len(lines) == 1 and "could not be written" in lines[0], result.stderr
    assert snapshot(folder) == before  # the earlier report exactly as it was, no partial file left


def _http(url: str, host: str) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Host": host})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_serve_on_another_loopback_address_answers_and_bad_numbers_get_400(tmp_path: Path) -> None:
    pytest.importorskip("starlette", reason="the serve extra is not installed")
    err = (tmp_path / "stderr").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "stream", "serve", str(SAMPLE), "--host", "127.0.0.2",
                             "--port", "0", "--out-dir", str(tmp_path / "out")], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 90
        port = None
        while time.monotonic() < deadline and port is None and proc.poll() is None:
            found = re.search(r"dashboard on http://127\.0\.0\.2:(\d+)/", (tmp_path / "stderr").read_text())
            port = int(found[1]) if found else None
            time.sleep(0.1)  # polling a file another process writes
        assert port is not None, (tmp_path / "stderr").read_text()
        base = f"http://127.0.0.2:{port}"
        assert _http(f"{base}/api/sources", f"127.0.0.2:{port}")[0] == 200
        assert _http(f"{base}/api/sources", f"evil.example:{port}")[0] == 403
        for query in ("since=inf", "since=1e400", "since=nan", "since=-1", "limit=1e400"):
            status, body = _http(f"{base}/api/events?{query}", f"127.0.0.2:{port}")
            assert status == 400 and "expected a number" in body, (query, status, body)
        assert _http(f"{base}/api/events?since=3", f"localhost:{port}")[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        err.close()
    assert "Traceback" not in (tmp_path / "stderr").read_text()
