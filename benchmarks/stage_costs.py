"""Where one frame's CPU time goes, stage by stage, inside one process (issue 18 item 1).

Each stage of the pipeline is run on its own, on real frames (the bundled 640x480 clip, one
face; with ``--quad`` the 1280x720 four-face clip), in batches the inference stage would take
for N streams (a batch of ``min(N, runtime.batch_size)`` frames), timed with the thread's CPU
clock (``time.thread_time``: the work of this thread only) and the wall clock, over ``--frames``
frames after a warm-up:

    decode        cv2.VideoCapture.read                           capture threads (one per source)
    prescale      FaceDetector.prescale: resize + RGB, just decoded  capture threads (one per source)
    letterbox     FaceDetector._fill: pad into the batch              inference (Python + NumPy)
    detector      the BlazeFace session call                     inference (ONNX Runtime)
    decode_nms    anchors -> boxes, batched weighted NMS         inference (NumPy)
    crop_align    crop_faces, eye alignment, every face          inference (OpenCV warps)
    classifier    the emotion session call                       inference (ONNX Runtime)
    tracking      IouTracker.update per frame                    inference (Python)
    event_record  frame_event + the JSON line written            consumer
    drawing       annotate (boxes, labels, bars)                 consumer (only with video/window/dashboard)
    encoding      VideoRecorder.write (mpeg4, PyAV)              consumer (only with video)

"inference Python" is the inference stage's time outside the two session calls: the part
that holds the GIL (OpenCV releases it inside resize/warp, so it is an upper bound).

    .venv/bin/python benchmarks/stage_costs.py --streams 1,8,14 --frames 240 [--quad] [--json out.json]

A benchmark, not a test: the figures depend on the machine and its load (printed with them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stream.config import SAMPLE_CLIP, Config  # noqa: E402
from stream.infer.classify import crop_faces, eye_roll_deg  # noqa: E402
from stream.pipeline import Models, load_models  # noqa: E402
from stream.records import Face, Frame, FrameResult  # noqa: E402
from stream.render.draw import annotate  # noqa: E402
from stream.render.record import EventLog, VideoRecorder, frame_event  # noqa: E402
from stream.track import IouTracker  # noqa: E402

INFERENCE_PYTHON = ("letterbox", "decode_nms", "crop_align", "tracking")


def read_frames(path: Path, n: int, prescale: Callable[[np.ndarray, bool], object] | None = None
                ) -> tuple[list[np.ndarray], float, list[object], float]:
    """The first ``n`` frames (looping the clip), the decode CPU time per frame in ms, and with
    ``prescale`` each frame's prescaled image made right after its decoding, as a capture thread
    does, and its CPU time per frame in ms."""
    frames: list[np.ndarray] = []
    prescaled: list[object] = []
    decode_s = prescale_s = 0.0
    while len(frames) < n:
        cap = cv2.VideoCapture(str(path))
        while len(frames) < n:
            t0 = time.thread_time()
            ok, image = cap.read()
            t1 = time.thread_time()
            decode_s += t1 - t0
            if not ok:
                break
            frames.append(image)
            if prescale is not None:
                prescaled.append(prescale(image, False))
                prescale_s += time.thread_time() - t1
        cap.release()
    return frames, decode_s * 1000 / n, prescaled, prescale_s * 1000 / n


def quad_clip(work: Path) -> Path:
    """The 1280x720 clip of four faces (the carphone clip tiled 2x2)."""
    out = work / "quad.mp4"
    cap = cv2.VideoCapture(str(SAMPLE_CLIP))
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (1280, 720))
    while True:
        ok, image = cap.read()
        if not ok:
            break
        small = cv2.resize(image, (640, 360))
        writer.write(np.vstack([np.hstack([small, small]), np.hstack([small, small])]))
    writer.release()
    return out


def costs(images: list[np.ndarray], prescaled: list, batch: int, config: Config, models: Models,
          work: Path) -> dict[str, float]:
    """CPU ms per frame of each stage, for batches of ``batch`` frames."""
    detector, classifier = models.detector, models.classifier
    labels = classifier.labels
    spent: dict[str, float] = dict.fromkeys(
        ("letterbox", "detector", "decode_nms", "crop_align", "classifier", "tracking", "event_record",
         "drawing", "encoding"), 0.0)

    @contextlib.contextmanager
    def clock(stage: str) -> Iterator[None]:
        t0 = time.thread_time()
        yield
        spent[stage] += time.thread_time() - t0

    tracker = IouTracker.from_config(config.tracking)
    h, w = images[0].shape[:2]
    recorder = VideoRecorder(work / "v.mp4", (w, h), 30.0, config.output.codec)
    log = EventLog(work / "e.jsonl")
    count = 0
    for start in range(0, len(images) - batch + 1, batch):
        chunk = images[start:start + batch]
        plans = [detector.views(im.shape[1], im.shape[0], False) for im in chunk]  # video frames
        scaled = {(i, plan[0].scale): prescaled[start + i] for i, plan in enumerate(plans) if plan}
        parts = []
        for k, net in enumerate(detector.nets):
            owners = [(i, v) for i, plan in enumerate(plans) for v in plan if v.net == k]
            if not owners:
                continue
            with clock("letterbox"):
                filled = detector._fill(net, chunk, owners, scaled)
            with clock("detector"):
                raw_boxes, raw_scores = net.infer(filled)
            with clock("decode_nms"):
                parts.append(detector._candidates(net, raw_boxes, raw_scores, owners))
        with clock("decode_nms"):
            found = detector._merge(parts, len(chunk))
        with clock("crop_align"):
            crops = [c for im, dets in zip(chunk, found, strict=True) for c in crop_faces(
                im, [d.box_xyxy for d in dets], classifier.contract, [eye_roll_deg(d.keypoints_xy) for d in dets])]
        with clock("classifier"):
            probs = classifier.predict(np.stack(crops))[0] if crops else np.zeros((0, len(labels)), np.float32)
        k = 0
        for image, dets in zip(chunk, found, strict=True):
            faces = [Face(d.box_xyxy, d.score, probs[k + j], keypoints_xy=d.keypoints_xy) for j, d in enumerate(dets)]
            k += len(dets)
            with clock("tracking"):
                tracker.update(faces)
            result = FrameResult(Frame("clip", count, count / 30, time.perf_counter(), image.copy()), faces)
            with clock("event_record"):
                log.write_record(frame_event(result, labels))
            with clock("drawing"):
                annotate(result, labels, status="30.0 fps  10 ms")
            with clock("encoding"):
                recorder.write(result.frame.image_bgr)
            count += 1
    recorder.close()
    log.close()
    return {stage: s * 1000 / count for stage, s in spent.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,8,14", help="stream counts (batch = min(N, batch_size))")
    parser.add_argument("--frames", type=int, default=240, help="frames timed per count")
    parser.add_argument("--quad", action="store_true", help="the 1280x720 four-face clip")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    config = Config().with_overrides({"runtime.providers": ["cpu"]})
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        clip = quad_clip(work) if args.quad else SAMPLE_CLIP
        models = load_models(config)
        images, decode_ms, prescaled, prescale_ms = read_frames(clip, args.frames + 16, models.detector.prescale)
        load0 = os.getloadavg()[0]
        for n in (int(x) for x in args.streams.split(",")):
            batch = min(n, config.runtime.batch_size)
            costs(images[:16], prescaled[:16], batch, config, models, work)  # warm-up: sessions, buffers, encoder
            row = {"decode": decode_ms, "prescale": prescale_ms,
                   **costs(images[16:], prescaled[16:], batch, config, models, work)}
            rows[n] = row
        load1 = os.getloadavg()[0]
    h, w = images[0].shape[:2]
    print(f"CPU ms per frame, {w}x{h}, {'four faces' if args.quad else 'one face'}, {args.frames} frames per "
          f"count; load average {load0:.1f} -> {load1:.1f} on {os.cpu_count()} cores")
    counts = list(rows)
    print(f"{'stage':<18}" + "".join(f"{f'N={n} (batch {min(n, 8)})':>18}" for n in counts))
    for stage in rows[counts[0]]:
        print(f"{stage:<18}" + "".join(f"{rows[n][stage]:>18.3f}" for n in counts))
    for name, stages in (("inference Python", INFERENCE_PYTHON), ("inference total", (
            "letterbox", "detector", "decode_nms", "crop_align", "classifier", "tracking"))):
        print(f"{name:<18}" + "".join(f"{sum(rows[n][s] for s in stages):>18.3f}" for n in counts))
    if args.json:
        args.json.write_text(json.dumps({"size": [w, h], "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
