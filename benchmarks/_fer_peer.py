"""The ``fer`` package's own video pipeline on one clip, in a process of its own.

Run by ``benchmarks/fps.py`` as a subprocess, so TensorFlow (which ``fer``
imports) never shares a process with the ONNX Runtime measurements. It runs
``fer.classes.Video.analyze`` as its README shows, with the defaults that make
it a pipeline like ours: Haar cascade faces, the TFLite emotion model,
annotated frames written to an mp4v video, no per-frame JPEGs, no window.

    python benchmarks/_fer_peer.py CLIP --frames N --repeats R --warmup-frames W --outdir DIR [--keras]

Repeats as ``_timing.timed_runs`` says. Prints one JSON object on its last stdout line: seconds per run, frames and
faces per frame of the last repeat, and the fer/TensorFlow versions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from _timing import Policy, timed_runs  # this script's folder is on sys.path


class _CountingDetector:
    """Wraps a ``fer.FER`` and records how many faces each frame had."""

    def __init__(self, detector: Any) -> None:
        self._detector = detector
        self.faces_per_frame: list[int] = []

    def detect_emotions(self, img: Any, face_rectangles: Any = None) -> list:
        faces = self._detector.detect_emotions(img, face_rectangles)
        self.faces_per_frame.append(len(faces))
        return faces

    def __getattr__(self, name: str) -> Any:
        return getattr(self._detector, name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("clip", type=Path)
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quiet-retries", type=int, default=0)
    parser.add_argument("--warmup-frames", type=int, default=30)
    parser.add_argument("--outdir", type=Path, required=True)
    parser.add_argument("--keras", action="store_true", help="fer's Keras model instead of its TFLite default")
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    warnings.filterwarnings("ignore")
    from fer.classes import Video
    from fer.fer import FER

    logging.getLogger("fer").setLevel(logging.ERROR)
    detector = FER(use_tflite=not args.keras)
    args.outdir.mkdir(parents=True, exist_ok=True)

    def once(frames: int) -> list[int]:
        counting = _CountingDetector(detector)
        video = Video(str(args.clip), outdir=str(args.outdir))
        # output="pandas": the default "csv" writes data.csv into the current folder.
        video.analyze(counting, display=False, output="pandas", max_results=frames, save_frames=False,
                      save_video=True, annotate_frames=True, zip_images=False)
        return counting.faces_per_frame

    once(min(args.warmup_frames, args.frames))
    runs, discarded = timed_runs(lambda: once(args.frames), Policy(args.repeats, args.quiet_retries))
    faces = runs[-1].value
    print(json.dumps({
        "seconds": [r.seconds for r in runs],
        "others_cores": [r.others_cores for r in runs],
        "discarded": discarded,
        "frames": len(faces),
        "faces_per_frame": faces,
        "model": "keras" if args.keras else "tflite",
        "versions": {p: _version(p) for p in ("fer", "tensorflow")},
    }))
    return 0


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    sys.exit(main())
