"""Per-frame cost of the video writers emostream can record with, at the sample clip's 640x480.

    python benchmarks/encoders.py [--frames 600] [--repeats 3]

Real frames (the bundled carphone clip, decoded once into memory and looped) go
through each writer; the table gives wall time and this process's CPU time per
frame (the CPU time is what recording takes away from inference on a small
machine), the file size, the mean PSNR of the frames decoded back against the
frames written, and whether every frame decodes after a normal close. Timings are medians of the repeats.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.render.record import VideoRecorder

CLIP = Path(__file__).resolve().parent.parent / "stream" / "assets" / "carphone_640x480.mp4"

#: (label, output.codec value)
WRITERS = [
    ("OpenCV mp4v (MPEG-4 Part 2, not fragmented)", "mp4v"),
    ("PyAV libx264 ultrafast, fragmented MP4", "h264"),
    ("PyAV mpeg4, fragmented MP4", "mpeg4"),
]


def load_frames() -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(CLIP))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def decode_back(path: Path, frames: list[np.ndarray]) -> tuple[int, float]:
    """Frames decoded from ``path`` and their mean PSNR (dB) against what was written."""
    cap = cv2.VideoCapture(str(path))
    n, psnr = 0, 0.0
    while True:
        ok, image = cap.read()
        if not ok:
            break
        psnr += cv2.PSNR(frames[n % len(frames)], image)
        n += 1
    cap.release()
    return n, psnr / max(n, 1)


def time_writer(codec: str, frames: list[np.ndarray], n: int, out: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds for ``n`` frames (open and close included), and the file size."""
    h, w = frames[0].shape[:2]
    t0, c0 = time.perf_counter(), time.process_time()
    rec = VideoRecorder(out, (w, h), 29.97, codec)
    for i in range(n):
        rec.write(frames[i % len(frames)])
    rec.close()
    return time.perf_counter() - t0, time.process_time() - c0, out.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    frames = load_frames()
    print(f"{len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]} from {CLIP.name}, "
          f"{args.frames} written per run, median of {args.repeats}; {os.cpu_count()} cores")
    print("| writer | ms/frame (wall) | ms/frame (CPU) | KB per frame | PSNR dB | frames decoded back |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, codec in WRITERS:
            out = Path(tmp) / f"{codec}.mp4"
            time_writer(codec, frames, 30, out)  # warm-up: codec set-up, page cache
            runs = [time_writer(codec, frames, args.frames, out) for _ in range(args.repeats)]
            wall = statistics.median(r[0] for r in runs) / args.frames * 1000
            cpu = statistics.median(r[1] for r in runs) / args.frames * 1000
            size = runs[-1][2] / args.frames / 1024
            decoded, psnr = decode_back(out, frames)
            print(f"| {label} (`output.codec: {codec}`) | {wall:.2f} | {cpu:.2f} | {size:.1f} | {psnr:.1f} | "
                  f"{decoded} / {args.frames} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
