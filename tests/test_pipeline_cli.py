"""End to end through the command line, on real clips: outputs, counts and every bad-input path."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.config import MODELS_DIR
from stream.render.outputs import partial_path
from tests.conftest import run_cli


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def assert_one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_video_file_frames_read_written_logged(clips: dict[str, Path], tmp_path: Path) -> None:
    out, ev = tmp_path / "out.mp4", tmp_path / "ev.jsonl"
    proc = run_cli("run", str(clips["vga"]), "--output", str(out), "--events", str(ev), "--no-display")
    assert proc.returncode == 0, proc.stderr
    events = read_events(ev)
    assert [e["frame"] for e in events] == list(range(120))
    assert count_frames(out) == 120
    cap = cv2.VideoCapture(str(out))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 480)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(29.97, abs=0.01)
    cap.release()
    # Media time comes from the container: 1/29.97 s apart.
    assert events[30]["t"] == pytest.approx(30 / 29.97, abs=1e-3)
    with_face = [e for e in events if len(e["faces"]) == 1]
    assert len(with_face) >= 119
    face = with_face[0]["faces"][0]
    assert set(face) == {"id", "box_xyxy", "score", "label", "probs", "keypoints_xy"}
    assert len(face["keypoints_xy"]) == 6
    x1, y1, x2, y2 = face["box_xyxy"]
    for x, y in face["keypoints_xy"][:4]:  # eyes, nose, mouth lie inside the face box
        assert x1 <= x <= x2 and y1 <= y <= y2
    assert face["label"] == max(face["probs"], key=face["probs"].get)
    assert list(face["probs"]) == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert sum(face["probs"].values()) == pytest.approx(1.0, abs=1e-3)
    x1, y1, x2, y2 = face["box_xyxy"]
    assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480 and (x2 - x1) > 100  # a big face, in source pixels
    assert len({f["id"] for e in events for f in e["faces"]}) <= 3  # one person keeps (nearly) one id
    assert "frames: 120 processed" in proc.stderr


def test_default_source_is_the_bundled_sample(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output:\n  dir: {tmp_path / 'o'}\n")
    proc = run_cli("run", "--config", str(cfg), "--no-display", "--max-frames", "10")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "carphone_640x480.annotated.mp4").is_file()
    assert len(read_events(tmp_path / "o" / "carphone_640x480.events.jsonl")) == 10


def test_quad_clip_finds_four_faces(clips: dict[str, Path], tmp_path: Path) -> None:
    ev = tmp_path / "ev.jsonl"
    proc = run_cli("run", str(clips["quad"]), "--output", str(tmp_path / "q.mp4"), "--events", str(ev), "--no-display")
    assert proc.returncode == 0, proc.stderr
    events = read_events(ev)
    four = sum(len(e["faces"]) == 4 for e in events)
    assert four / len(events) >= 0.95
    ids = {f["id"] for e in events for f in e["faces"]}
    assert len(ids) >= 4


def test_python_dash_m_and_script_agree(clips: dict[str, Path], tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "emostream"
    proc = subprocess.run([str(script), "run", str(clips["noface"]), "--events", str(tmp_path / "e.jsonl"),
                           "--output", str(tmp_path / "o.mp4"), "--no-display"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert all(e["faces"] == [] for e in read_events(tmp_path / "e.jsonl"))
    assert len(read_events(tmp_path / "e.jsonl")) == 40


def test_truncated_video_processes_what_decodes_and_says_so(clips: dict[str, Path], tmp_path: Path) -> None:
    ev = tmp_path / "ev.jsonl"
    proc = run_cli("run", str(clips["truncated"]), "--output", str(tmp_path / "t.mp4"), "--events", str(ev),
                   "--no-display")
    assert proc.returncode == 0, proc.stderr
    n = len(read_events(ev))
    assert 10 < n < 120
    assert count_frames(tmp_path / "t.mp4") == n
    assert "truncated" in proc.stderr and f"after {n} of 120 frames" in proc.stderr


@pytest.mark.parametrize("kind", ["gray", "bgra", "gray16"])
def test_image_mode_any_channels(kind: str, face_image: np.ndarray, tmp_path: Path) -> None:
    image = {
        "gray": cv2.cvtColor(face_image, cv2.COLOR_BGR2GRAY),
        "bgra": cv2.cvtColor(face_image, cv2.COLOR_BGR2BGRA),
        "gray16": cv2.cvtColor(face_image, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257,
    }[kind]
    src = tmp_path / f"in_{kind}.png"
    cv2.imwrite(str(src), image)
    out, ev = tmp_path / "out.png", tmp_path / "ev.jsonl"
    proc = run_cli("run", str(src), "--output", str(out), "--events", str(ev))
    assert proc.returncode == 0, proc.stderr
    annotated = cv2.imread(str(out))
    assert annotated.shape == (480, 640, 3)
    events = read_events(ev)
    assert len(events) == 1 and len(events[0]["faces"]) == 1


def test_image_default_output_keeps_extension(face_image: np.ndarray, tmp_path: Path) -> None:
    src = tmp_path / "photo.jpg"
    cv2.imwrite(str(src), face_image)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output:\n  dir: {tmp_path / 'o'}\n")
    proc = run_cli("run", str(src), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert cv2.imread(str(tmp_path / "o" / "photo.annotated.jpg")) is not None


def test_face_cut_by_the_frame_edge(face_image: np.ndarray, tmp_path: Path) -> None:
    # Shift the frame so the face's left part falls outside it.
    w = face_image.shape[1]
    shifted = np.zeros_like(face_image)
    shifted[:, : w - 270] = face_image[:, 270:]
    src = tmp_path / "edge.png"
    cv2.imwrite(str(src), shifted)
    ev = tmp_path / "ev.jsonl"
    proc = run_cli("run", str(src), "--output", str(tmp_path / "o.png"), "--events", str(ev))
    assert proc.returncode == 0, proc.stderr
    faces = read_events(ev)[0]["faces"]
    assert len(faces) == 1
    assert faces[0]["box_xyxy"][0] < 0  # the box passes the left edge: the crop repeats the edge pixels
    assert sum(faces[0]["probs"].values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("make_args", "fragments"),
    [
        (lambda t, c: [str(t / "missing.mp4")], ["missing.mp4", "no such file"]),
        (lambda t, c: [str(_text_file(t))], ["notvideo.mp4", "not a video"]),
        (lambda t, c: [str(t)], ["directory"]),
        (lambda t, c: [str(c["vga"]), "--output", "/proc/forbidden/out.mp4"],
         ["output video", "could not be written"]),
        (lambda t, c: [str(c["vga"]), "--model", str(t / "nope.onnx")], ["classifier model", "no such file"]),
        (lambda t, c: [str(c["vga"]), "--model", str(_text_file(t, "bad.onnx"))],
         ["classifier model", "could not be loaded"]),
        (lambda t, c: [str(c["vga"]), "--detector", str(MODELS_DIR / "emotion_minixception.onnx")],
         ["not BlazeFace"]),
        (lambda t, c: [str(c["vga"]), "--model", str(MODELS_DIR / "blazeface_short_range.onnx")],
         ["no 'emostream.contract' metadata"]),
        (lambda t, c: [str(c["vga"]), "--config", str(_yaml(t, "runtime:\n  batch_size: 0\n"))],
         ["runtime.batch_size"]),
        (lambda t, c: [str(c["vga"]), "--config", str(_yaml(t, "runtime:\n  batchsize: 4\n"))],
         ["unknown config key 'runtime.batchsize'"]),
        (lambda t, c: [str(c["vga"]), "--config", str(_yaml(t, "tracking: [1, 2]\n"))],
         ["'tracking' must be a mapping"]),
        (lambda t, c: [str(c["vga"]), "--config", str(t / "none.yaml")], ["none.yaml", "could not be read"]),
        (lambda t, c: [str(c["vga"]), "--providers", "gpu"], ["runtime.providers"]),
        (lambda t, c: [str(c["vga"]), "--max-frames", "0"], ["--max-frames"]),
    ],
    ids=["missing", "not-a-video", "directory", "unwritable-output", "missing-model", "corrupt-model",
         "detector-not-blazeface", "model-without-contract", "bad-config-value", "unknown-config-key",
         "bad-section", "missing-config", "bad-provider", "bad-flag"],
)
def test_bad_input_one_line_exit_2(make_args, fragments: list[str], clips: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli("run", *make_args(tmp_path, clips), "--no-display")
    assert_one_error_line(proc, *fragments)


def _text_file(tmp: Path, name: str = "notvideo.mp4") -> Path:
    path = tmp / name
    path.write_text("this is not a video\n" * 100)
    return path


def _yaml(tmp: Path, text: str) -> Path:
    path = tmp / "bad.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_finalises_outputs(sig: signal.Signals, clips: dict[str, Path], tmp_path: Path) -> None:
    out, ev = tmp_path / "out.mp4", tmp_path / "ev.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "stream", "run", str(clips["vga601"]), "--output", str(out),
                             "--events", str(ev), "--no-display", "--batch-size", "1"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    partial = partial_path(ev)  # where the log is while the run writes it
    while time.monotonic() < deadline and (not partial.exists() or partial.stat().st_size < 2000):
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    events = read_events(ev)  # every line complete JSON
    assert 0 < len(events) < 601
    assert [e["frame"] for e in events] == list(range(len(events)))
    assert count_frames(out) == len(events)  # a playable video with every logged frame


def test_cuda_request_falls_back_to_cpu_quietly(clips: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli("run", str(clips["noface"]), "--providers", "tensorrt,cuda,cpu", "--max-frames", "5",
                   "--output", str(tmp_path / "o.mp4"), "--events", str(tmp_path / "e.jsonl"), "--no-display")
    assert proc.returncode == 0, proc.stderr
    assert "CUDA" not in proc.stderr and "TensorRT" not in proc.stderr and "[E:" not in proc.stderr
