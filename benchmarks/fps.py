"""How fast emostream runs: each stage, the whole pipeline, the I/O limit and the tools people use today.

    python benchmarks/fps.py [VIDEO] [--frames N] [--batch-sizes 1,4,8,16] [--providers cpu,cuda]
                             [--repeats R] [--json OUT] [--plot OUT.png] [--no-peers] [--cache-dir DIR]
    emostream bench ...          (the same)

With no VIDEO it makes two clips from the carphone sample (``_clips.py``):
640x480 with one face (601 frames) and 1280x720 with four faces (2x2 tiling).
On each clip, in one run:

1. I/O limit: OpenCV decode only, and decode + mp4v encode.
2. Capture: a naive ``VideoCapture.read()`` loop, imutils ``FileVideoStream``
   and our capture thread, without and with per-frame work (pyimagesearch's
   experiment); only real, unique frames are counted.
3. Stages: detector and classifier per batch size and provider (ms per frame, ms per face).
4. Pipeline: ``stream.pipeline.run`` end to end, recording on and off, and its
   share of the I/O limit; detection rates from its event log.
5. Peers: ``fer``'s own video pipeline (``_fer_peer.py``, in a subprocess) and
   the seed project's loop (Haar + one classifier call per face).

Every figure is the median of ``--repeats`` timed runs after an untimed warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's decoder chatter, before cv2 loads

import cv2
import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from _clips import Clip, describe_clip, make_clips  # noqa: E402
from _threads import ThreadCpu  # noqa: E402
from _timing import LONG_RUN_S, OTHERS_LIMIT_CORES, WARMUP_FRAMES, Measure, Policy, measure, timed_runs  # noqa: E402

from stream.capture import CaptureThread, FileSource  # noqa: E402
from stream.commands.common import positive_int  # noqa: E402
from stream.config import Config, load_config  # noqa: E402
from stream.errors import StreamError  # noqa: E402
from stream.infer import EmotionClassifier, crop_faces  # noqa: E402
from stream.infer.session import PROVIDER_NAMES, resolve_providers  # noqa: E402
from stream.pipeline import Models, Pipeline, RunOptions, RunSummary, SourceSpec, load_models  # noqa: E402
from stream.records import EndOfStream, Face, Frame, FrameResult, StageError  # noqa: E402
from stream.render import EventLog, annotate, event_record  # noqa: E402

__all__ = ["main", "usable_providers"]

#: Frames held in memory for the stage measurements (decoded once, reused by every batch size).
STAGE_FRAMES = 64
#: Targets from the issue, checked on the bundled clips with the CPU provider.
TARGET_VGA_FPS = 200.0
TARGET_SHARE_OF_LIMIT = 0.5
TARGET_X_FER = 6.0
TARGET_DETECT = {"vga": 0.99, "quad": 0.95}
FER_INSTALL = "pip install --no-deps fer==25.10.3 && pip install pandas pillow requests tqdm tensorflow"


# ------------------------------------------------------------------------------------- 1. I/O limit


def decode_only(path: Path, frames: int) -> int:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    n = 0
    try:
        while n < frames:
            ok, _ = cap.read()
            if not ok:
                break
            n += 1
    finally:
        cap.release()
    return n


def decode_encode(path: Path, frames: int, out: Path, codec: str = "mp4v") -> int:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*codec), fps, size)
    n = 0
    try:
        while n < frames:
            ok, image = cap.read()
            if not ok:
                break
            writer.write(image)
            n += 1
    finally:
        cap.release()
        writer.release()
    return n


# --------------------------------------------------------------------------------------- 2. capture


def pyimagesearch_work(image: np.ndarray) -> np.ndarray:
    """The per-frame work of pyimagesearch's read_frames_slow/fast.py: resize to 450 px wide, gray, 3 channels, text."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (450, round(h * 450 / w)), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    out = np.dstack([gray, gray, gray])
    cv2.putText(out, "Queue Size", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 255, 0), 2)
    return out


def read_naive(path: Path, frames: int, work: bool) -> int:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    n = 0
    try:
        while n < frames:
            ok, image = cap.read()
            if not ok:
                break
            if work:
                pyimagesearch_work(image)
            n += 1
    finally:
        cap.release()
    return n


def read_imutils(path: Path, frames: int, work: bool) -> int:
    """imutils' FileVideoStream, used so that its known bugs do not count frames that are not there.

    After the last frame its thread queues ``None`` (it reads past the end and
    queues the failed read): that is the end, not a frame. ``read()`` blocks
    forever if the thread dies, so the queue is read with a timeout instead.
    ``stop()`` joins a thread that may be asleep for 0.1 s on a full queue.
    """
    from imutils.video import FileVideoStream

    stream = FileVideoStream(str(path)).start()
    n = 0
    try:
        while n < frames:
            image = stream.Q.get(timeout=30)
            if image is None:
                break
            if work:
                pyimagesearch_work(image)
            n += 1
    finally:
        stream.stop()
    return n


def read_ours(path: Path, frames: int, work: bool, queue_size: int = 64) -> int:
    source = FileSource(path)
    source.open()
    stop = threading.Event()
    capture = CaptureThread(source, queue_size, stop, max_frames=frames).start()
    n = 0
    try:
        while True:
            item = capture.frames.get(timeout=30)
            if isinstance(item, StageError):
                raise item.error
            if isinstance(item, EndOfStream):
                break
            if work:
                pyimagesearch_work(item.image_bgr)
            n += 1
    finally:
        capture.close()
    return n


READERS: dict[str, tuple[str, Callable[[Path, int, bool], int]]] = {
    "naive": ("naive cv2.VideoCapture.read() loop", read_naive),
    "imutils": ("imutils FileVideoStream (thread + queue)", read_imutils),
    "ours": ("stream.capture CaptureThread", read_ours),
}


# ----------------------------------------------------------------------------------------- 3. stages


def load_frames(path: Path, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    frames = []
    while len(frames) < count:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _classifier_input(classifier: EmotionClassifier, face_bgr: np.ndarray) -> np.ndarray:
    """One Haar face crop (BGR, any size) in the classifier's colour and size."""
    w, h = classifier.contract.input_size_wh
    crop = cv2.resize(face_bgr, (w, h), interpolation=cv2.INTER_AREA)
    if classifier.contract.color == "gray":
        return cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
    if classifier.contract.color == "rgb":
        return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
    return crop


def bench_stages(frames: list[np.ndarray], models: Models, batch_sizes: Sequence[int], policy: Policy
                 ) -> list[dict[str, Any]]:
    """Detector, crop, classifier and drawing on frames held in memory. One row per stage and batch size."""
    detector, classifier = models.detector, models.classifier
    detector.warm_up(tuple(batch_sizes))
    rows: list[dict[str, Any]] = []
    n = len(frames)
    detections = [detector.detect([f])[0] for f in frames]
    n_faces = sum(len(d) for d in detections)
    boxes = [[d.box_xyxy for d in dets] for dets in detections]
    size = detector.input_size
    model_input = np.stack([cv2.resize(f, (size, size)) for f in frames])
    if not detector.uint8_input:
        model_input = model_input.astype(np.float32) / 127.5 - 1.0

    # Each function handles all the held frames; ``measure`` checks the count it returns.
    for b in batch_sizes:
        chunks = _chunks(frames, b)

        def detect(k: int, chunks: list = chunks) -> int:
            for c in chunks:
                detector.detect(list(c))
            return k

        m = measure(detect, n, policy, warmup_frames=0, faces=n_faces)
        rows.append({"stage": "detect", "what": "letterbox + model + decode/NMS", "batch": b, **m.to_json()})

        inputs = _chunks(model_input, b)

        def model_only(k: int, inputs: list = inputs) -> int:
            for x in inputs:
                detector.session.run(None, {detector.input_name: x})  # type: ignore[attr-defined]
            return k

        m = measure(model_only, n, policy, warmup_frames=0)
        rows.append({"stage": "detect-model", "what": "ONNX Runtime call only", "batch": b, **m.to_json()})

    def crop(k: int) -> int:
        for f, bx in zip(frames, boxes, strict=True):
            crop_faces(f, bx, classifier.contract)
        return k

    m = measure(crop, n, policy, warmup_frames=0, faces=n_faces)
    rows.append({"stage": "crop", "what": "crop_faces (one warpAffine per face)", "batch": None, **m.to_json()})
    crops = [crop_faces(f, bx, classifier.contract) for f, bx in zip(frames, boxes, strict=True)]
    if n_faces:
        for b in batch_sizes:
            groups = [np.stack([c for per_frame in g for c in per_frame]) for g in _chunks(crops, b)]
            groups = [g for g in groups if len(g)]
            classifier.warm_up(tuple(sorted({len(g) for g in groups})))

            def classify(k: int, groups: list = groups) -> int:
                for g in groups:
                    classifier.classify(g)
                return k

            m = measure(classify, n, policy, warmup_frames=0, faces=n_faces)
            rows.append({"stage": "classify", "what": f"faces of {b} frame(s) per call", "batch": b, **m.to_json()})
    probs = np.full(len(classifier.labels), 1.0 / len(classifier.labels), np.float32)
    results_proto = [[Face(bx, 0.9, probs, i) for i, bx in enumerate(per_frame)] for per_frame in boxes]

    canvases = [f.copy() for f in frames]  # annotate draws in place; its cost does not depend on the pixels

    def draw(k: int) -> int:
        for image, faces in zip(canvases, results_proto, strict=True):
            annotate(FrameResult(Frame("bench", 0, 0.0, 0.0, image), faces), classifier.labels, bars=True,
                     status=" 99.9 fps    12 ms")
        return k

    m = measure(draw, n, policy, warmup_frames=0, faces=n_faces)
    rows.append({"stage": "annotate", "what": "boxes, labels, bars, fps text", "batch": None, **m.to_json()})

    results = [FrameResult(Frame("bench", i, i / 30.0, 0.0, f), faces)
               for i, (f, faces) in enumerate(zip(frames, results_proto, strict=True))]
    with tempfile.TemporaryDirectory() as tmp:
        def write_events(k: int) -> int:
            with EventLog(Path(tmp) / "events.jsonl") as log_file:
                for r in results:
                    log_file.write_record(event_record(r, classifier.labels))
            return k

        m = measure(write_events, n, policy, warmup_frames=0, faces=n_faces)
    rows.append({"stage": "events", "what": "EventLog.write (JSON Lines)", "batch": None, **m.to_json()})
    return rows


# --------------------------------------------------------------------------------------- 4. pipeline


def bench_pipeline(clip: Clip, frames: int, config: Config, models: Models, recording: bool, policy: Policy,
                   out_dir: Path) -> dict[str, Any]:
    """``stream.pipeline.run`` on the clip, models loaded once: wall time of the whole call.

    Each timed run also records the CPU time of every thread (``_threads.ThreadCpu``);
    the run with the median time is the one whose thread times and latencies are reported.
    """
    cfg = config.with_overrides({"output.video": recording, "output.events": recording, "output.progress": False,
                                 "output.dir": str(out_dir)})
    video = out_dir / f"{clip.name}.annotated.mp4" if recording else None
    events = out_dir / f"{clip.name}.events.jsonl" if recording else None

    def once(k: int) -> tuple[RunSummary, dict[str, float]]:
        options = RunOptions(display=False, max_frames=k if k < clip.frames else None)
        with ThreadCpu() as cpu:
            (summary,) = Pipeline([SourceSpec(str(clip.path), output=video, events=events)], cfg, options, models).run()
        if summary.error is not None:
            raise summary.error
        if summary.warning:
            raise RuntimeError(summary.warning)
        if summary.frames_processed != k:
            raise RuntimeError(f"the pipeline processed {summary.frames_processed} frames, expected {k}")
        return summary, cpu.groups()

    once(min(WARMUP_FRAMES, frames))
    runs, discarded = timed_runs(lambda: once(frames), policy)
    m = Measure.from_runs(frames, runs, discarded)
    middle = sorted(runs, key=lambda r: r.seconds)[(len(runs) - 1) // 2]
    summary, cpu = middle.value
    row: dict[str, Any] = {"recording": recording, "batch": cfg.runtime.batch_size, **m.to_json(),
                           "fps_reported": round(statistics.median(r.value[0].fps for r in runs), 2),
                           "latency_p50_ms": round(summary.latency_percentile(50), 2),
                           "latency_p95_ms": round(summary.latency_percentile(95), 2),
                           "thread_cpu_ms_per_frame": {k: round(1000.0 * v / frames, 3) for k, v in cpu.items()},
                           "thread_busy": {k: round(v / middle.seconds, 3) for k, v in cpu.items()}}
    if events is not None:
        counts = [len(json.loads(line)["faces"]) for line in events.read_text().splitlines()]
        row["faces_per_frame"] = _face_stats(counts, clip.faces_per_frame)
    return row


def _face_stats(counts: Sequence[int], expected: int | None) -> dict[str, Any]:
    n = len(counts) or 1
    stats: dict[str, Any] = {"frames": len(counts), "any": round(sum(c > 0 for c in counts) / n, 4),
                             "mean": round(sum(counts) / n, 3)}
    if expected is not None:
        stats["expected"] = expected
        stats["exact"] = round(sum(c == expected for c in counts) / n, 4)
    return stats


# ------------------------------------------------------------------------------------------ 5. peers


def haar_available() -> str:
    """'' when OpenCV has Haar cascades, else why not."""
    if not hasattr(cv2, "CascadeClassifier"):
        return f"OpenCV {cv2.__version__} has no cv2.CascadeClassifier (OpenCV 5 removed it)"
    path = Path(getattr(getattr(cv2, "data", None), "haarcascades", "")) / "haarcascade_frontalface_default.xml"
    if not path.is_file():
        return f"OpenCV {cv2.__version__} ships no haarcascade_frontalface_default.xml"
    return ""


def bench_seed_loop(clip: Clip, frames: int, classifier: EmotionClassifier, policy: Policy, out: Path
                    ) -> dict[str, Any]:
    """The seed project's loop: Haar faces, one classifier call per face, drawn and written (mp4v).

    Our ONNX classifier stands in for the seed's Keras model, so the difference
    to our pipeline is the structure (Haar, no batching, one thread), not the runtime.
    """
    cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))
    counts: list[int] = []

    def once(k: int) -> int:
        counts.clear()
        cap = cv2.VideoCapture(str(clip.path), cv2.CAP_FFMPEG)
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), cap.get(cv2.CAP_PROP_FPS) or 30.0,
                                 clip.size_wh)
        try:
            while len(counts) < k:
                ok, frame = cap.read()
                if not ok:
                    break
                gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
                faces = cascade.detectMultiScale(gray, scaleFactor=1.3, minNeighbors=5)
                for x, y, w, h in faces:
                    probs = classifier.classify(_classifier_input(classifier, frame[y:y + h, x:x + w])[None])[0]
                    label = classifier.labels[int(np.argmax(probs))]
                    cv2.rectangle(frame, (x, y), (x + w, y + h), (255, 0, 0), 2)
                    cv2.putText(frame, label, (x, y - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (36, 255, 12), 2)
                writer.write(frame)
                counts.append(len(faces))
        finally:
            cap.release()
            writer.release()
        return len(counts)

    m = measure(once, frames, policy)
    return {"name": "seed loop", "what": "Haar (scale 1.3, 5 neighbours) + our ONNX classifier, one call per face, "
            "annotated mp4v video", **m.to_json(), "faces_per_frame": _face_stats(counts, clip.faces_per_frame)}


def bench_fer(clip: Clip, frames: int, policy: Policy, out_dir: Path) -> dict[str, Any]:
    """fer's ``Video.analyze`` in a subprocess (see ``_fer_peer.py``)."""
    name = "fer"
    what = "fer.classes.Video.analyze: Haar + TFLite model, annotated mp4v video"
    try:
        metadata.version("fer")
    except metadata.PackageNotFoundError:
        return {"name": name, "what": what, "skipped": f"fer is not installed (without torch: {FER_INSTALL})"}
    cmd = [sys.executable, str(BENCH_DIR / "_fer_peer.py"), str(clip.path), "--frames", str(frames),
           "--repeats", str(policy.repeats), "--quiet-retries", str(policy.quiet_retries),
           "--warmup-frames", str(min(WARMUP_FRAMES // 2, frames)), "--outdir", str(out_dir)]
    out_dir.mkdir(parents=True, exist_ok=True)  # also the child's working folder: fer writes files there
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=out_dir)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"name": name, "what": what, "skipped": f"fer failed: {last[:300]}"}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    if data["frames"] != frames:
        return {"name": name, "what": what, "skipped": f"fer handled {data['frames']} of {frames} frames"}
    m = Measure(frames, data["seconds"], others_cores=data["others_cores"], discarded=data["discarded"])
    return {"name": name, "what": what, **m.to_json(), "versions": data["versions"],
            "faces_per_frame": _face_stats(data["faces_per_frame"], clip.faces_per_frame)}


# --------------------------------------------------------------------------------------- providers


def usable_providers(requested: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split requested provider names into those that can run here and messages for the others.

    Uses ``stream.infer.session.resolve_providers`` (the pipeline's own selection),
    so a provider the pipeline would skip is reported here, not measured.
    """
    resolved = resolve_providers(tuple(requested))
    usable, notes = [], []
    for name in requested:
        if PROVIDER_NAMES[name] in resolved:
            usable.append(name)
        else:
            notes.append(f"{name}: not available on this machine")
    return usable, notes


def load_for(config: Config, provider: str) -> tuple[Models | None, str]:
    """Models on exactly ``provider``, or None and why (ONNX Runtime fell back to another one)."""
    cfg = config.with_overrides({"runtime.providers": [provider]})
    models = load_models(cfg)
    wanted = PROVIDER_NAMES[provider]
    got = {models.detector.session.get_providers()[0], models.classifier.session.get_providers()[0]}  # type: ignore[attr-defined]
    if got != {wanted}:
        return None, f"{provider}: not available on this machine ({wanted} did not load; ran on {', '.join(got)})"
    return models, ""


# ------------------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    import onnxruntime as ort

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("opencv-python", "opencv-python-headless", "numpy", "onnxruntime", "onnxruntime-gpu",
                    "imutils", "fer", "tensorflow"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "opencv_threads": cv2.getNumThreads(),
        "onnxruntime_providers": ort.get_available_providers(),
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


# ------------------------------------------------------------------------------------------ one clip


@dataclass
class ClipResult:
    clip: dict[str, Any]
    io: dict[str, Any] = field(default_factory=dict)
    capture: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    pipeline: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    peers: list[dict[str, Any]] = field(default_factory=list)
    bottleneck: dict[str, Any] = field(default_factory=dict)


def bench_clip(clip: Clip, args: argparse.Namespace, config: Config, models_by_provider: dict[str, Models],
               out_dir: Path, say: Callable[[str], None]) -> ClipResult:
    frames = min(args.frames or clip.frames, clip.frames)
    policy = Policy(args.repeats, args.quiet_retries)
    res = ClipResult({**asdict(clip), "path": str(clip.path), "frames_used": frames})
    out_dir.mkdir(parents=True, exist_ok=True)

    say(f"[{clip.name}] I/O limit")
    res.io["decode"] = measure(lambda k: decode_only(clip.path, k), frames, policy).to_json()
    enc = out_dir / f"{clip.name}.io_encode.mp4"
    res.io["decode_encode"] = measure(lambda k: decode_encode(clip.path, k, enc), frames, policy).to_json()

    say(f"[{clip.name}] capture")
    for work in (False, True):
        for key, (what, reader) in READERS.items():
            m = measure(lambda k, r=reader, w=work: r(clip.path, k, w), frames, policy)
            res.capture.append({"reader": key, "what": what, "work": work, **m.to_json()})

    held = load_frames(clip.path, min(frames, STAGE_FRAMES))
    for provider, models in models_by_provider.items():
        say(f"[{clip.name}] stages on {provider}")
        res.stages[provider] = bench_stages(held, models, args.batch_sizes, policy)
        say(f"[{clip.name}] pipeline on {provider}")
        res.pipeline[provider] = [bench_pipeline(clip, frames, config.with_overrides({"runtime.providers": [provider]}),
                                                 models, rec, policy, out_dir / provider)
                                  for rec in (False, True)]
    del held

    if not args.no_peers:
        say(f"[{clip.name}] peers: fer")
        res.peers.append(bench_fer(clip, frames, policy, out_dir / "fer"))
        why = haar_available()
        if why:
            res.peers.append({"name": "seed loop", "skipped": why})
        else:
            say(f"[{clip.name}] peers: seed loop")
            classifier = next(iter(models_by_provider.values())).classifier
            res.peers.append(bench_seed_loop(clip, frames, classifier, policy, out_dir / f"{clip.name}.seed.mp4"))
    for provider in models_by_provider:
        res.bottleneck[provider] = bottleneck(res, provider, args.cores)
    return res


def _stage_ms(rows: list[dict[str, Any]], stage: str, batch: int | None) -> float:
    """ms per frame of ``stage`` at ``batch`` (or the nearest measured batch size)."""
    found = [r for r in rows if r["stage"] == stage]
    if not found:
        return 0.0
    if batch is not None and found[0]["batch"] is not None:
        found.sort(key=lambda r: abs(r["batch"] - batch))
    return float(found[0]["ms_per_frame"])


#: Thread groups of ``ThreadCpu`` and the pipeline stage each one is.
THREAD_STAGES = {
    "capture": "capture",
    "ffmpeg": "FFmpeg decoder threads",
    "inference": "inference",
    "native": "ONNX Runtime/OpenCV pool threads",
    "main": "render/record",
}


def bottleneck(res: ClipResult, provider: str, cores: int) -> dict[str, Any]:
    """Which stage limits the pipeline, two ways.

    *Estimate*, from the isolated stage timings: the pipeline runs three threads,
    capture (decode), inference (detect, crop, classify) and render/record
    (annotate, events, encode), so frames/s can be no more than 1000 / the
    slowest one's ms per frame, nor more than cores x 1000 / their sum.

    *Measured*, from the CPU time of each thread during the pipeline run: the
    stage whose thread is busy nearly all the wall time is the bottleneck; when
    all threads together use (nearly) every core, the CPU is.
    """
    rows = res.stages[provider]
    batch = res.pipeline[provider][0]["batch"]
    decode = res.io["decode"]["ms_per_frame"]
    encode = max(0.0, res.io["decode_encode"]["ms_per_frame"] - decode)
    inference = _stage_ms(rows, "detect", batch) + _stage_ms(rows, "crop", None) + _stage_ms(rows, "classify", batch)
    out: dict[str, Any] = {}
    for rec in res.pipeline[provider]:
        stages = {"capture": decode, "inference": inference}
        if rec["recording"]:
            stages["render/record"] = _stage_ms(rows, "annotate", None) + _stage_ms(rows, "events", None) + encode
        slowest = max(stages, key=stages.__getitem__)
        total = sum(stages.values())
        by_stage, by_cpu = 1000.0 / stages[slowest], cores * 1000.0 / total
        entry: dict[str, Any] = {
            "estimate_ms_per_frame": {k: round(v, 3) for k, v in stages.items()},
            "estimate_slowest": slowest, "estimate_bound_fps": round(min(by_stage, by_cpu), 1),
            "estimate_limited_by": "slowest stage" if by_stage <= by_cpu else f"CPU ({cores} cores)",
            "measured_fps": rec["fps"],
        }
        busy = rec.get("thread_busy") or {}
        python_threads = {k: v for k, v in busy.items() if k in ("capture", "inference", "main")}
        if python_threads:
            hot = max(python_threads, key=python_threads.__getitem__)
            cores_used = sum(busy.values())
            others = rec.get("other_processes_cores")
            entry.update({"thread_busy": busy, "busiest_thread": hot, "cores_used": round(cores_used, 2),
                          "other_processes_cores": others})
            stage = f"{THREAD_STAGES[hot]}, {python_threads[hot]:.0%} busy"
            if python_threads[hot] >= 0.85:
                entry["verdict"] = f"the {THREAD_STAGES[hot]} thread, busy {python_threads[hot]:.0%} of the time"
            elif cores_used >= 0.85 * cores:
                entry["verdict"] = f"the CPU: {cores_used:.2f} of {cores} cores busy; busiest thread: {stage}"
            else:
                entry["verdict"] = (f"no thread saturated, {cores_used:.2f} of {cores} cores busy; "
                                    f"busiest thread: {stage}")
                if others is not None and cores_used + others >= 0.85 * cores:
                    entry["verdict"] += f"; other processes took {others:.2f} of the {cores} cores"
        out["recording_on" if rec["recording"] else "recording_off"] = entry
    return out


# ------------------------------------------------------------------------------------------- targets


def check_targets(results: list[ClipResult]) -> list[dict[str, Any]]:
    """The issue's acceptance figures, on the bundled clips with the CPU provider."""
    checks: list[dict[str, Any]] = []
    by_name = {r.clip["name"]: r for r in results}
    vga = by_name.get("vga")
    if vga is not None and "cpu" in vga.pipeline:
        on = next(p for p in vga.pipeline["cpu"] if p["recording"])
        limit = vga.io["decode_encode"]["fps"]
        checks.append({"check": "vga: pipeline, recording on >= 200 frames/s", "value": on["fps"],
                       "ok": on["fps"] >= TARGET_VGA_FPS})
        checks.append({"check": "vga: pipeline >= 50% of decode+encode", "value": round(on["fps"] / limit, 3),
                       "ok": on["fps"] / limit >= TARGET_SHARE_OF_LIMIT})
        fer = next((p for p in vga.peers if p["name"] == "fer" and "fps" in p), None)
        if fer is not None:
            checks.append({"check": "vga: pipeline >= 6x fer", "value": round(on["fps"] / fer["fps"], 2),
                           "ok": on["fps"] / fer["fps"] >= TARGET_X_FER})
    for name, target in TARGET_DETECT.items():
        r = by_name.get(name)
        if r is None or "cpu" not in r.pipeline:
            continue
        stats = next(p for p in r.pipeline["cpu"] if p["recording"])["faces_per_frame"]
        checks.append({"check": f"{name}: exactly {stats['expected']} face(s) in >= {target:.0%} of frames",
                       "value": stats["exact"], "ok": stats["exact"] >= target})
    return checks


# --------------------------------------------------------------------------------------------- output


def _discarded(results: list[ClipResult]) -> int:
    """Disturbed runs redone, over every figure of every clip."""
    def walk(x: Any) -> int:
        if isinstance(x, dict):
            return int(x.get("discarded_runs", 0)) + sum(walk(v) for v in x.values())
        if isinstance(x, list):
            return sum(walk(v) for v in x)
        return 0

    return sum(walk(asdict(r)) for r in results)


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def _faces(stats: dict[str, Any] | None) -> str:
    if not stats:
        return ""
    if "exact" in stats:
        return f"{stats['exact']:.1%} exactly {stats['expected']}"
    return f"{stats['any']:.1%} with a face"


READER_SHORT = {"naive": "naive VideoCapture.read() loop", "imutils": "imutils FileVideoStream",
                "ours": "ours: stream.capture CaptureThread"}
PEER_SHORT = {"fer": "fer (its Video.analyze)", "seed loop": "seed loop (Haar + 1 call per face)"}


def _row(section: str, what: str, r: dict[str, Any], note: str = "") -> str:
    others = r.get("other_processes_cores")
    return (f"{section:<9} {what:<44} {_f(r.get('fps')):>9} {_f(r.get('ms_per_frame'), 2):>9} "
            f"{_f(r.get('ms_per_face'), 3):>8} {_f(others, 2):>7}  {note}").rstrip()


def _clip_table(c: dict[str, Any]) -> list[str]:
    clip = c["clip"]
    lines = [f"== {clip['name']}: {clip['about']}; {clip['frames_used']} of {clip['frames']} frames =="]
    head = f"{'section':<9} {'what':<44} {'frames/s':>9} {'ms/frame':>9} {'ms/face':>8} {'others':>7}  note"
    lines += [head, "-" * (len(head) + 40)]
    dec, de = c["io"]["decode"]["fps"], c["io"]["decode_encode"]["fps"]
    lines.append(_row("I/O", "decode only (cv2.VideoCapture)", c["io"]["decode"], "the limit without recording"))
    lines.append(_row("I/O", "decode + encode (mp4v cv2.VideoWriter)", c["io"]["decode_encode"],
                      "the limit with recording"))
    for r in c["capture"]:
        what = READER_SHORT[r["reader"]] + (" + work" if r["work"] else "")
        lines.append(_row("capture", what, r, f"{r['frames']} unique frames"))
    for provider, rows in c["stages"].items():
        for r in rows:
            b = f" b={r['batch']}" if r["batch"] is not None else ""
            lines.append(_row("stage", f"{r['stage']}{b} ({provider})", r, r["what"]))
    for provider, rows in c["pipeline"].items():
        for r in rows:
            limit, limit_name = (de, "decode+encode") if r["recording"] else (dec, "decode")
            note = f"{r['fps'] / limit:.0%} of {limit_name}; latency p50 {r['latency_p50_ms']:.0f} ms"
            if r.get("faces_per_frame"):
                note += f"; faces: {_faces(r['faces_per_frame'])}"
            what = f"emostream, recording {'on' if r['recording'] else 'off'} ({provider}, batch {r['batch']})"
            lines.append(_row("pipeline", what, r, note))
    for p in c["peers"]:
        name = PEER_SHORT.get(p["name"], p["name"])
        if "skipped" in p:
            lines.append(_row("peer", name, {}, f"skipped: {p['skipped']}"))
        else:
            lines.append(_row("peer", name, p, f"faces: {_faces(p.get('faces_per_frame'))}"))
    peers = {p["name"]: p for p in c["peers"] if "fps" in p}
    for provider, rows in c["pipeline"].items():
        on = next(r for r in rows if r["recording"])
        ups = [f"{on['fps'] / p['fps']:.1f}x {name}" for name, p in peers.items()]
        if ups:
            lines.append(f"speed-up of emostream ({provider}, recording on): {', '.join(ups)}")
    for provider, b in c["bottleneck"].items():
        for key, v in b.items():
            lines.append(f"bottleneck, {key.replace('_', ' ')} ({provider}): {v.get('verdict', 'not measured')}")
            if "thread_busy" in v:
                busy = ", ".join(f"{k} {x:.0%}" for k, x in sorted(v["thread_busy"].items(), key=lambda kv: -kv[1]))
                others = v.get("other_processes_cores")
                lines.append(f"    threads busy (share of wall time): {busy}; {v['cores_used']:.2f} cores used"
                             + (f", other processes {others:.2f}" if others is not None else ""))
            est = " + ".join(f"{k} {ms:.2f}" for k, ms in v["estimate_ms_per_frame"].items())
            lines.append(f"    estimate from stage rows: {est} ms/frame -> at most {v['estimate_bound_fps']:.0f} "
                         f"frames/s ({v['estimate_limited_by']}); measured {v['measured_fps']:.0f}")
    return lines


def table(report: dict[str, Any]) -> str:
    """The readable report: machine, one table per clip, legend, targets."""
    m = report["machine"]
    lines = [
        f"emostream FPS benchmark, {report['date']}",
        f"machine: {m['cpu']}; {m['cpu_count']} CPUs ({m['cpus_usable']} usable); {m['platform']}; "
        f"Python {m['python']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        f"onnxruntime providers built in: {', '.join(m['onnxruntime_providers'])}; measured here: "
        f"{', '.join(report['providers']) or 'none'}",
        f"load average (1/5/15 min): {report['load_start']} at start, {report['load_end']} at end",
        f"command: {report['command']}",
        f"each figure: median of {report['repeats']} timed runs after an untimed warm-up (2 where the first "
        f"takes over {LONG_RUN_S:.0f} s); "
        f"config: batch {report['config']['batch_size']}, {report['config']['detector']}, "
        f"{report['config']['classifier']}",
    ]
    if report["quiet_retries"]:
        lines.append(f"disturbed runs (others > {OTHERS_LIMIT_CORES} cores) redone: up to {report['quiet_retries']} "
                     f"per figure, {report['discarded_runs']} in all")
    lines.extend(f"note: {n}" for n in report["notes"])
    for c in report["clips"]:
        lines += ["", *_clip_table(c)]
    lines += ["", "legend:",
              "  work = pyimagesearch's per-frame work (resize to 450 px wide, gray, 3 channels, text); "
              "only real frames are counted (imutils queues a None after the last one)",
              "  stage rows: frames held in memory; ms/face = ms per detected face; b = frames per call",
              "  pipeline = stream.pipeline.run with models loaded; recording on = annotated mp4v video + "
              "event log; wall time of the whole call",
              "  fer = fer.classes.Video.analyze (Haar cascade, TFLite model, annotated mp4v video), "
              "in its own process",
              "  seed loop = Haar (scale 1.3, 5 neighbours) + our ONNX classifier called once per face, "
              "annotated mp4v video",
              "  faces: share of frames with exactly the number of faces the clip has",
              "  threads: main = render/record (annotate, encode, event log); inference = detect, crop, classify, "
              "track; capture = reads frames (FFmpeg decodes on its own av:* threads); busy = CPU time / wall time",
              "  others: cores that other processes kept busy during the timed runs (mean; - when runs were too "
              "short to tell); near 0 on a quiet machine"]
    if report["targets"]:
        lines += ["", "targets (issue), CPU provider:"]
        for t in report["targets"]:
            lines.append(f"  [{'ok' if t['ok'] else 'SHORT'}] {t['check']}: {t['value']}")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """A horizontal bar chart of frames/s per clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips = report["clips"]
    fig, axes = plt.subplots(len(clips), 1, figsize=(9, 0.9 + 3.4 * len(clips)), squeeze=False)
    for ax, c in zip(axes[:, 0], clips, strict=True):
        bars: list[tuple[str, float, str]] = [
            ("decode only", c["io"]["decode"]["fps"], "#999999"),
            ("decode + encode", c["io"]["decode_encode"]["fps"], "#777777"),
        ]
        bars += [(f"capture: {r['reader']}" + (" + work" if r["work"] else ""), r["fps"], "#9ecae1")
                 for r in c["capture"]]
        for provider, rows in c["pipeline"].items():
            bars += [(f"emostream {provider}, rec {'on' if r['recording'] else 'off'}", r["fps"], "#2171b5")
                     for r in rows]
        bars += [(p["name"], p["fps"], "#e6550d") for p in c["peers"] if "fps" in p]
        labels, values, colors = zip(*bars, strict=True)
        y = np.arange(len(bars))[::-1]
        ax.barh(y, values, color=colors)
        ax.set_yticks(y, labels)
        for yi, v in zip(y, values, strict=True):
            ax.text(v, yi, f" {v:.0f}", va="center", fontsize=8)
        ax.set_xlabel("frames/s (median)")
        ax.set_title(f"{c['clip']['name']}: {c['clip']['size_wh'][0]}x{c['clip']['size_wh'][1]}, "
                     f"{c['clip']['frames_used']} frames", fontsize=10)
        ax.set_xlim(0, max(values) * 1.15)
    fig.suptitle(f"emostream FPS benchmark, {report['machine']['cpus_usable']} CPUs", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return values


def _provider_list(text: str) -> list[str]:
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in PROVIDER_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected providers from {', '.join(PROVIDER_NAMES)}, got {text!r}")
    return names




def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmarks/fps.py", description="FPS benchmark of emostream: I/O limit, capture, stages, pipeline "
        "and peers (fer, the seed loop) on the same clip.")
    parser.add_argument("video", nargs="?", type=Path,
                        help="video to measure; default: clips made from carphone (640x480 and 1280x720 2x2)")
    parser.add_argument("--frames", type=positive_int, help="use only the first N frames of each clip")
    parser.add_argument("--batch-sizes", type=_int_list, default=[1, 4, 8, 16],
                        help="detector/classifier batch sizes (default 1,4,8,16)")
    parser.add_argument("--providers", type=_provider_list, default=["cpu", "cuda"],
                        help="ONNX Runtime providers to measure, each that loads here (default cpu,cuda)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs per figure (default 3)")
    parser.add_argument("--quiet-retries", type=int, default=0, metavar="N",
                        help=f"redo a timed run during which other processes used more than {OTHERS_LIMIT_CORES} "
                        "cores, at most N times per figure (default 0: keep every run)")
    parser.add_argument("--config", type=Path, help="emostream config (YAML); default: built-in defaults")
    parser.add_argument("--json", type=Path, help="write the full results as JSON")
    parser.add_argument("--plot", type=Path, help="write a bar chart (PNG)")
    parser.add_argument("--no-peers", action="store_true", help="skip fer and the seed loop")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "out" / "bench",
                        help="where clips and outputs go (default out/bench)")
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)) if hasattr(
        os, "sched_getaffinity") else (os.cpu_count() or 1), help=argparse.SUPPRESS)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table. Returns 0, or 2 for bad input."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)

    def say(text: str) -> None:
        if not args.quiet:
            print(f"bench: {text}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    notes: list[str] = []
    try:
        config = load_config(args.config).with_overrides({"output.progress": False})
        if args.video is not None:
            if not args.video.is_file():
                raise ValueError(f"VIDEO '{args.video}' could not be opened: no such file")
            clips = [describe_clip(args.video)]
        else:
            say(f"making clips in {args.cache_dir}")
            clips = make_clips(args.cache_dir)
        providers, skipped = usable_providers(args.providers)
        notes += skipped
        models_by_provider: dict[str, Models] = {}
        for provider in providers:
            models, why = load_for(config, provider)
            if models is None:
                notes.append(why)
            else:
                models_by_provider[provider] = models
        for n in notes:
            print(n, file=sys.stderr)
        if not models_by_provider:
            raise ValueError("no requested provider can run here")
        results = [bench_clip(clip, args, config, models_by_provider, args.cache_dir / "runs" / clip.name, say)
                   for clip in clips]
    except (StreamError, ValueError, RuntimeError) as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(["python benchmarks/fps.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "load_start": load_start,
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "repeats": args.repeats,
        "quiet_retries": args.quiet_retries,
        "discarded_runs": _discarded(results),
        "providers": list(models_by_provider),
        "notes": notes,
        "config": {"batch_size": config.runtime.batch_size, "intra_op_threads": config.runtime.intra_op_threads,
                   "queue_size": config.capture.queue_size, "codec": config.output.codec,
                   "detector": Path(config.detector.model).name, "classifier": Path(config.classifier.model).name},
        "clips": [asdict(r) for r in results],
        "targets": check_targets(results) if args.video is None else [],
        "duration_s": 0.0,
    }
    report["duration_s"] = round(time.perf_counter() - started, 1)
    print(table(report))
    print(f"\n(benchmark took {report['duration_s']:.0f} s)")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    if args.plot is not None:
        plot(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
