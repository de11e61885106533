"""Faults and hostile input (issue 10): each ends with exit 2 and one line, or with correct output.

Nothing is lost and nothing is destroyed: an output is written under a partial
name and renamed at the end, a failed run leaves an earlier file as it was, a
second run on the same output is refused, and a run killed with SIGKILL leaves
a recording that plays.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.config import MODELS_DIR
from stream.render.outputs import partial_path
from tests.conftest import CLI_CWD, run_cli
from tests.test_pipeline_cli import assert_one_error_line, count_frames, read_events

MODEL = MODELS_DIR / "emotion_minixception.onnx"


def start_cli(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "stream", "run", *args, "--no-display", "--no-progress"],
                            cwd=CLI_CWD, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)  # type: ignore[call-overload]


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen[str], timeout_s: float = 60.0) -> int:
    """Until ``path`` holds ``count`` lines; returns how many it holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        n = path.read_bytes().count(b"\n") if path.exists() else 0
        if n >= count:
            return n
        if proc.poll() is not None:
            pytest.fail(f"the run ended early: {proc.communicate()[1]}")
        time.sleep(0.05)  # polling a file another process writes
    pytest.fail(f"{path} did not reach {count} lines within {timeout_s} s")


def huge_png(path: Path, width: int = 60000, height: int = 60000) -> Path:
    """A 100-byte PNG whose header declares ``width`` x ``height`` (decoding it would take GBs)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def model_with_contract(tmp: Path, change: Callable[[dict], None], name: str = "m.onnx") -> Path:
    """The default classifier with its contract metadata edited by ``change``."""
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(MODEL))
    for prop in model.metadata_props:
        if prop.key == "emostream.contract":
            contract = json.loads(prop.value)
            change(contract)
            prop.value = json.dumps(contract)
    path = tmp / name
    onnx.save(model, str(path))
    return path


def _yaml(tmp: Path, text: str) -> Path:
    path = tmp / "c.yaml"
    path.write_text(text)
    return path


def _fifo(tmp: Path) -> Path:
    path = tmp / "pipe"
    os.mkfifo(path)
    return path


def _non_utf8(tmp: Path, name: bytes) -> Path:
    """A path in ``tmp`` whose file name is not valid UTF-8 (as Python spells it: surrogate escapes)."""
    return Path(os.fsdecode(os.fsencode(tmp) + b"/" + name))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


# --- bad input, refused before any work: exit 2, one line ---------------------------------------------

BAD_INPUT = [
    ("batch-size-flag", lambda t, c: [str(c["vga"]), "--batch-size", "100000"], ["--batch-size", "256"]),
    ("batch-size-config", lambda t, c: [str(c["vga"]), "--config", str(_yaml(t, "runtime:\n  batch_size: 100000\n"))],
     ["runtime.batch_size", "<= 256"]),
    ("queue-size-config", lambda t, c: [str(c["vga"]), "--config", str(_yaml(t, "capture:\n  queue_size: 10000000\n"))],
     ["capture.queue_size", "<= 1024"]),
    ("result-queue-config", lambda t, c: [str(c["vga"]), "--config",
                                          str(_yaml(t, "runtime:\n  result_queue_size: 100000\n"))],
     ["runtime.result_queue_size", "<= 1024"]),
    ("nan-in-config", lambda t, c: [str(c["vga"]), "--config", str(_yaml(t, "capture:\n  read_timeout_s: .nan\n"))],
     ["capture.read_timeout_s", "finite"]),
    ("binary-config", lambda t, c: [str(c["vga"]), "--config", str(_binary(t))], ["not a text (UTF-8) file"]),
    ("fifo-config", lambda t, c: [str(c["vga"]), "--config", str(_fifo(t))], ["FIFO"]),
    ("max-seconds-nan", lambda t, c: [str(c["vga"]), "--max-seconds", "nan"], ["--max-seconds", "nan"]),
    ("max-seconds-inf", lambda t, c: [str(c["vga"]), "--max-seconds", "inf"], ["--max-seconds", "inf"]),
    ("fifo-source", lambda t, c: [str(_fifo(t))], ["FIFO (named pipe)", "not a file"]),
    ("device-source", lambda t, c: ["/dev/null"], ["character device", "webcam"]),
    ("non-utf8-source", lambda t, c: [str(_copy(c["vga"], _non_utf8(t, b"bad\xff.mp4")))], ["not valid UTF-8"]),
    ("huge-png-header", lambda t, c: [str(huge_png(t / "huge.png"))], ["60000x60000", "capture.max_image_pixels"]),
    ("pixel-limit-configurable", lambda t, c: [str(_image(t)), "--config",
                                                str(_yaml(t, "capture:\n  max_image_pixels: 1000\n"))],
     ["640x480", "(1,000)"]),
    ("contract-normalize-abc", lambda t, c: [str(c["vga"]), "--model",
                                             str(model_with_contract(t, lambda d: d.update(normalize="abc")))],
     ["contract metadata is invalid", "normalize"]),
    ("contract-input-size-inf", lambda t, c: [str(c["vga"]), "--model", str(model_with_contract(
        t, lambda d: d.update(input_size_wh=[1e400, 64])))], ["contract metadata is invalid"]),
    ("video-as-png", lambda t, c: [str(c["vga"]), "--output", str(t / "x.png")], ["x.png", "must be a video file"]),
    ("output-is-source", lambda t, c: [str(_copy(c["vga"], t / "self.mp4")), "--output", str(t / "self.mp4")],
     ["is the source itself"]),
    ("events-is-source", lambda t, c: [str(_copy(c["vga"], t / "self.mp4")), "--events", str(t / "self.mp4")],
     ["event log", "is the source itself"]),
    ("events-is-output", lambda t, c: [str(c["vga"]), "--output", str(t / "x.mp4"), "--events", str(t / "x.mp4")],
     ["same file as the output video"]),
    ("output-is-directory", lambda t, c: [str(c["vga"]), "--output", str(t)], ["it is a directory"]),
    ("output-is-device", lambda t, c: [str(c["vga"]), "--output", "/dev/null"], ["character device"]),
]


def _binary(tmp: Path) -> Path:
    path = tmp / "garbage.yaml"
    path.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    return path


def _image(tmp: Path) -> Path:
    path = tmp / "small.png"
    cv2.imwrite(str(path), np.zeros((480, 640, 3), np.uint8))
    return path


@pytest.mark.parametrize(("make_args", "fragments"), [case[1:] for case in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_one_line_exit_2(make_args, fragments: list[str], clips: dict[str, Path], tmp_path: Path) -> None:
    args = make_args(tmp_path, clips)
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.suffix == ".mp4"}
    proc = run_cli("run", *args, "--no-display", timeout=60)
    assert_one_error_line(proc, *fragments)
    assert "wrote" not in proc.stderr
    for path, data in before.items():  # the source (and any earlier file) is untouched
        assert path.read_bytes() == data
    assert not list(tmp_path.glob("*.partial.*"))


def test_terminal_escape_codes_in_labels_are_escaped(clips: dict[str, Path], tmp_path: Path) -> None:
    def evil(contract: dict) -> None:
        contract["labels"] = ["\x1b[2J\x1b[31mangry", *contract["labels"][1:-1], "neutral\x07"]

    model = model_with_contract(tmp_path, evil)
    ev = tmp_path / "ev.jsonl"
    proc = run_cli("run", str(clips["vga"]), "--model", str(model), "--max-frames", "5", "--events", str(ev),
                   "--output", str(tmp_path / "o.mp4"), "--no-display", "--no-progress", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr
    labels = list(read_events(ev)[0]["faces"][0]["probs"])
    assert labels[0] == "\\x1b[2J\\x1b[31mangry" and labels[-1] == "neutral\\x07"


def test_non_utf8_output_names_are_written(clips: dict[str, Path], tmp_path: Path) -> None:
    out, ev = _non_utf8(tmp_path, b"out\xfe.mp4"), _non_utf8(tmp_path, b"ev\xfe.jsonl")
    proc = run_cli("run", str(clips["vga"]), "--output", str(out),
                   "--events", str(ev), "--max-frames", "10", "--no-display", "--no-progress", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(read_events(ev)) == 10
    linked = tmp_path / "plain.mp4"  # OpenCV (the checker) cannot open the name itself
    os.link(out, linked)
    assert count_frames(linked) == 10


# --- write errors: exit 2, one line, never "wrote"; an earlier file survives ------------------------------


def test_events_on_dev_full(clips: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli("run", str(clips["vga"]), "--events", "/dev/full", "--output", str(tmp_path / "o.mp4"),
                   "--no-display", "--no-progress", timeout=60)
    assert_one_error_line(proc, "event log '/dev/full'", "No space left on device")
    assert "wrote" not in proc.stderr
    assert not (tmp_path / "o.mp4").exists()  # a failed run publishes nothing


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: a full disk, as far as the run's files go (writes fail with EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize(("codec", "reason"), [("mpeg4", "File too large"), ("h264", "File too large"),
                                              ("mp4v", "disk full?")])
def test_full_disk_keeps_the_earlier_video(codec: str, reason: str, clips: dict[str, Path], tmp_path: Path) -> None:
    out, ev = tmp_path / "keep.mp4", tmp_path / "ev.jsonl"
    _copy(clips["vga"], out)
    before = out.read_bytes()
    config = _yaml(tmp_path, f"output:\n  codec: {codec}\n")
    proc = run_cli("run", str(clips["vga601"]), "--output", str(out), "--events", str(ev), "--config", str(config),
                   "--no-display", "--no-progress", timeout=60, preexec_fn=_limit_file_size(300_000))
    assert_one_error_line(proc, "output video", "keep.mp4", reason)
    assert "wrote" not in proc.stderr
    assert out.read_bytes() == before
    assert not ev.exists()


def test_failed_start_keeps_the_earlier_video(clips: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "keep.mp4"
    _copy(clips["vga"], out)
    before = out.read_bytes()
    proc = run_cli("run", str(clips["noface"]), "--output", str(out), "--events", "/proc/forbidden/ev.jsonl",
                   "--no-display", timeout=60)
    assert_one_error_line(proc, "event log")
    assert out.read_bytes() == before
    assert not partial_path(out).exists()


# --- outputs: partial names, locks, SIGKILL ---------------------------------------------------------------


def test_outputs_appear_only_under_their_final_names(clips: dict[str, Path], tmp_path: Path) -> None:
    out, ev = tmp_path / "o.mp4", tmp_path / "o.jsonl"
    out.write_bytes(b"an earlier file")
    proc = run_cli("run", str(clips["noface"]), "--output", str(out), "--events", str(ev), "--no-display",
                   "--no-progress", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert count_frames(out) == len(read_events(ev)) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.episodes.jsonl", "o.jsonl", "o.mp4"] or \
        sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl", "o.mp4"]


def test_second_run_on_the_same_output_is_refused(clips: dict[str, Path], tmp_path: Path) -> None:
    out, ev = tmp_path / "o.mp4", tmp_path / "o.jsonl"
    first = start_cli(str(clips["vga601"]), "--output", str(out), "--events", str(ev), "--batch-size", "1")
    try:
        wait_for_lines(partial_path(ev), 5, first)
        second = run_cli("run", str(clips["noface"]), "--output", str(out), "--events", str(tmp_path / "b.jsonl"),
                         "--no-display", timeout=60)
        assert_one_error_line(second, "output video", "being written by another emostream run")
        third = run_cli("run", str(clips["noface"]), "--output", str(tmp_path / "c.mp4"), "--events", str(ev),
                        "--no-display", timeout=60)
        assert_one_error_line(third, "event log", "being written by another emostream run")
    finally:
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=30)
    assert first.returncode == 130, stderr
    events = read_events(ev)
    assert [e["frame"] for e in events] == list(range(len(events)))  # one run's frames, in order
    assert count_frames(out) == len(events)


def test_sigkill_leaves_a_playable_recording(clips: dict[str, Path], tmp_path: Path) -> None:
    out, ev = tmp_path / "o.mp4", tmp_path / "o.jsonl"
    proc = start_cli(str(clips["vga601"]), "--output", str(out), "--events", str(ev), "--batch-size", "1")
    try:
        wait_for_lines(partial_path(ev), 100, proc)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert not out.exists() and not ev.exists()  # nothing carries the final names
    lines = partial_path(ev).read_bytes().count(b"\n")
    decoded = count_frames(partial_path(out))
    # Fragments of one second (30 frames) reach the disk whole: at least two of them were written.
    assert 60 <= decoded <= lines, (decoded, lines)

    # The next run to the same output keeps the killed run's recording aside and publishes its own.
    again = run_cli("run", str(clips["noface"]), "--output", str(out), "--events", str(ev), "--no-display",
                    "--no-progress", timeout=60)
    assert again.returncode == 0, again.stderr
    assert count_frames(out) == 40
    kept = list(tmp_path.glob("o.recovered-*.mp4"))
    assert len(kept) == 1 and count_frames(kept[0]) == decoded
    assert len(list(tmp_path.glob("o.recovered-*.jsonl"))) == 1
    assert not partial_path(out).exists()


def _catches_sigterm(pid: int) -> bool:
    """True once the process has a handler for SIGTERM (Linux: ``SigCgt`` in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("delay_s", [0.0, 0.3, 1.0])
def test_sigterm_during_start_up_exits_130(delay_s: float, clips: dict[str, Path], tmp_path: Path) -> None:
    out, ev = tmp_path / "o.mp4", tmp_path / "o.jsonl"
    proc = start_cli(str(clips["vga"]), "--output", str(out), "--events", str(ev))
    # Before Python runs its first line nothing can catch SIGTERM; from then on, the run must end with 130.
    deadline = time.monotonic() + 30
    while not _catches_sigterm(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(delay_s)  # the moment of start-up to hit: imports, model loading, opening
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130), stderr  # 0 only if the whole clip was done first
    assert "Traceback" not in stderr
    assert not partial_path(out).exists() and not partial_path(ev).exists()
    lines = len(read_events(ev)) if ev.exists() else 0
    assert (count_frames(out) if out.exists() else 0) == lines


# --- network: HTTP video files, credentials off the command line --------------------------------------------


@pytest.fixture
def http_folder(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served by ``python -m http.server`` on 127.0.0.1 (a subprocess): (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "-d",
                             str(folder)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()  # "Serving HTTP on 127.0.0.1 port 41234 (...) ..."
        port = int(line.split(" port ")[1].split()[0])
        yield folder, f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_http_video_file_is_read_to_the_end(http_folder: tuple[Path, str], clips: dict[str, Path],
                                            tmp_path: Path) -> None:
    folder, base = http_folder
    _copy(clips["whole"], folder / "clip.mp4")  # index first: Python's server ignores Range requests
    ev = tmp_path / "ev.jsonl"
    proc = run_cli("run", f"{base}/clip.mp4", "--output", str(tmp_path / "o.mp4"), "--events", str(ev),
                   "--no-display", "--no-progress", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert [e["frame"] for e in read_events(ev)] == list(range(120))
    assert count_frames(tmp_path / "o.mp4") == 120


def test_http_video_file_that_cannot_be_read_says_why(http_folder: tuple[Path, str], clips: dict[str, Path],
                                                      tmp_path: Path) -> None:
    folder, base = http_folder
    _copy(clips["vga"], folder / "clip.mp4")  # index at the end, and a server that cannot seek to it
    proc = run_cli("run", f"{base}/clip.mp4", "--output", str(tmp_path / "o.mp4"), "--no-display",
                   "--no-progress", timeout=60)
    assert_one_error_line(proc, "Range", "faststart")
    missing = run_cli("run", f"{base}/missing.mp4", "--output", str(tmp_path / "o.mp4"), "--no-display", timeout=60)
    assert_one_error_line(missing, "missing.mp4", "could not be opened")


@pytest.mark.parametrize(
    ("url", "env", "expected"),
    [
        ("rtsp://cam@10.0.0.5/s", {"EMOSTREAM_PASSWORD": "pw"}, "rtsp://cam:pw@10.0.0.5/s"),
        ("rtsp://cam@10.0.0.5:8554/s", {"EMOSTREAM_PASSWORD": "pw", "EMOSTREAM_PASSWORD_10_0_0_5": "host"},
         "rtsp://cam:host@10.0.0.5:8554/s"),
        ("rtsp://cam@door.local/s", {"EMOSTREAM_PASSWORD_DOOR_LOCAL": "p@ss:w"}, "rtsp://cam:p@ss:w@door.local/s"),
        ("rtsp://cam:given@10.0.0.5/s", {"EMOSTREAM_PASSWORD": "pw"}, "rtsp://cam:given@10.0.0.5/s"),
        ("rtsp://10.0.0.5/s", {"EMOSTREAM_PASSWORD": "pw"}, "rtsp://10.0.0.5/s"),
        ("rtsp://cam@10.0.0.5/s", {}, "rtsp://cam@10.0.0.5/s"),
    ],
    ids=["fallback", "per-host-wins", "special-characters", "url-has-one", "no-user", "no-variable"],
)
def test_password_from_the_environment(url: str, env: dict[str, str], expected: str) -> None:
    from stream.capture.credentials import with_password

    assert with_password(url, env) == expected


def test_rtsp_password_from_the_environment_not_the_command_line(rtsp_server, tmp_path: Path) -> None:
    password = "Env-s3cret"
    camera = rtsp_server(args=("--testsrc", "--size", "320x240", "--fps", "30"), user="viewer", password=password)
    url = f"rtsp://viewer@127.0.0.1:{camera.port}{camera.path}"  # what `ps` shows: no password
    ev = tmp_path / "ev.jsonl"
    env = {**os.environ, "EMOSTREAM_PASSWORD_127_0_0_1": password}
    proc = run_cli("run", url, "--events", str(ev), "--output", str(tmp_path / "o.mp4"), "--max-seconds", "2",
                   "--no-display", "--no-progress", timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(read_events(ev)) >= 10
    assert password not in proc.stderr + ev.read_text()
    wrong = run_cli("run", url, "--events", str(ev), "--max-seconds", "2", "--no-display", timeout=60,
                    env={**os.environ, "EMOSTREAM_PASSWORD": "wrong"})
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
