"""The multi-source engine: fair batches, per-source outputs, a source failing alone, padded buckets."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stream.capture.spec import SourceSpec, load_sources, unique_names
from stream.config import Config, load_config
from stream.errors import ConfigError, SourceError
from stream.infer.session import BatchBuckets
from stream.infer.stage import Mux
from stream.pipeline import Pipeline, RunOptions, load_models
from stream.records import EndOfStream, Frame
from stream.stats import LatencyHistogram
from tests import rtsp_fixtures
from tests.rtsp_fixtures import RtspServer
from tests.test_live_cli import fast_config, read_events, wait_for_events

rtsp_server = rtsp_fixtures.rtsp_server


def _frame(source_id: int, index: int) -> Frame:
    return Frame(f"s{source_id}", index, index / 30, time.perf_counter(), np.zeros((4, 4, 3), np.uint8), source_id)


def test_mux_takes_round_robin_and_forwards_each_sources_end() -> None:
    queues: list[queue.Queue] = [queue.Queue() for _ in range(3)]
    for i in range(6):
        queues[0].put(_frame(0, i))  # a file catching up
    queues[1].put(_frame(1, 0))
    queues[2].put(EndOfStream("eof", source_id=2))
    mux = Mux(queues, batch_size=4)
    frames, markers = mux.take(threading.Event())
    # One frame per source per round: source 1 is not starved by source 0's backlog.
    assert [(f.source_id, f.index) for f in frames] == [(0, 0), (1, 0), (0, 1), (0, 2)]
    assert [m.source_id for m in markers] == [2]
    assert mux.active == {0, 1}
    frames, _ = mux.take(threading.Event())
    assert [(f.source_id, f.index) for f in frames] == [(0, 3), (0, 4), (0, 5)]  # flushed: nothing more waits


def test_mux_returns_when_stopped_with_nothing_to_take() -> None:
    stop = threading.Event()
    stop.set()
    assert Mux([queue.Queue()], batch_size=4).take(stop) == ([], [])


def test_latency_histogram_percentiles_are_close_and_memory_constant() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=3.0, sigma=1.0, size=20_000)
    hist = LatencyHistogram()
    size = hist._counts.nbytes
    for v in values:
        hist.add(float(v))
    for q in (50, 95, 99):
        exact = float(np.percentile(values, q))
        assert abs(hist.percentile(q) - exact) / exact < 0.02
    assert hist._counts.nbytes == size and hist.count == len(values)


def test_padded_buckets_give_the_same_results_as_unpadded(clips: dict[str, Path]) -> None:
    import cv2

    config = Config()
    plain = load_models(config)
    bucketed = load_models(config.with_overrides({"runtime.batch_buckets": "on"}))
    assert bucketed.detector.buckets.sizes == (1, 2, 4, 8)
    cap = cv2.VideoCapture(str(clips["quad"]))
    images = [cap.read()[1] for _ in range(11)]  # 11 frames: a batch of 8 and one of 3 padded to 4
    cap.release()
    want = plain.detector.detect(images)
    got = bucketed.detector.detect(images)
    assert [len(d) for d in got] == [len(d) for d in want] == [4] * 11
    for a, b in zip(want, got, strict=True):
        for da, db in zip(a, b, strict=True):
            np.testing.assert_allclose(da.box_xyxy, db.box_xyxy, atol=1e-3)
            np.testing.assert_allclose(da.keypoints_xy, db.keypoints_xy, atol=1e-3)
    w, h = plain.classifier.contract.input_size_wh
    crops = np.random.default_rng(1).integers(0, 255, (7, h, w), dtype=np.uint8)
    np.testing.assert_allclose(plain.classifier.classify(crops), bucketed.classifier.classify(crops), atol=1e-5)


def test_bucket_sizes_and_splitting() -> None:
    assert BatchBuckets.for_batch(12, True).sizes == (1, 2, 4, 8, 12)
    assert BatchBuckets.for_batch(12, False).sizes == ()
    seen: list[int] = []

    def infer(x: np.ndarray) -> list[np.ndarray]:
        seen.append(len(x))
        return [x * 2]

    out = BatchBuckets((1, 2, 4)).run(infer, np.arange(7.0)[:, None])
    assert seen == [4, 4] and out[0].ravel().tolist() == [0, 2, 4, 6, 8, 10, 12]


def test_several_files_in_one_run_match_separate_runs(clips: dict[str, Path], tmp_path: Path) -> None:
    config = load_config(None).with_overrides({"output.dir": tmp_path, "output.progress": False})
    models = load_models(config)
    specs = [SourceSpec(str(clips["vga"])), SourceSpec(str(clips["quad"])), SourceSpec(str(clips["noface"])),
             SourceSpec(str(clips["vga"]), max_frames=50)]
    summaries = Pipeline(specs, config, RunOptions(), models).run()
    assert [s.error for s in summaries] == [None] * 4
    assert [s.frames_processed for s in summaries] == [120, 120, 40, 50]
    assert [s.faces for s in summaries] == [120, 480, 0, 50]
    names = [p.name for s in summaries for p in s.outputs]
    assert "carphone_640x480-2.events.jsonl" in names  # the same file twice gets two names
    for summary, spec in zip(summaries, specs, strict=True):
        events = summary.outputs[1]
        lines = [json.loads(line) for line in events.read_text().splitlines()]
        assert [r["frame"] for r in lines] == list(range(summary.frames_processed))
        alone = Pipeline([spec], config.with_overrides({"output.dir": tmp_path / "alone"}), RunOptions(),
                         models).run()[0]
        assert (alone.frames_processed, alone.faces) == (summary.frames_processed, summary.faces)
        # Tracking is per source: the ids of one source do not depend on the others.
        alone_lines = [json.loads(line) for line in alone.outputs[1].read_text().splitlines()]
        assert [[f["id"] for f in r["faces"]] for r in alone_lines] == [[f["id"] for f in r["faces"]] for r in lines]


def test_a_dead_camera_ends_alone_while_a_file_beside_it_finishes(
    rtsp_server: Callable[..., RtspServer], clips: dict[str, Path], tmp_path: Path
) -> None:
    camera = rtsp_server(args=("--testsrc", "--size", "320x240", "--fps", "30"))
    ev_cam, ev_file = tmp_path / "cam.jsonl", tmp_path / "file.jsonl"
    sources = tmp_path / "cams.yaml"
    sources.write_text(f"sources:\n  - name: door\n    url: {camera.url}\n    events: {ev_cam}\n"
                       f"  - name: clip\n    path: {clips['vga601']}\n    events: {ev_file}\n")
    proc = subprocess.Popen([sys.executable, "-m", "stream", "run", "--sources", str(sources), "--out-dir",
                             str(tmp_path), "--no-display", "--no-progress", "--config",
                             str(fast_config(tmp_path, budget_s=1.0))],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # While the run is on, the log is written under its temporary name (renamed when it ends).
        wait_for_events(ev_cam.with_name("cam.partial.jsonl"), 10, proc)
        camera.kill()  # for good: the reconnect budget (1 s) runs out
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2, err
    assert "source 0 (door)" in err and "Traceback" not in err
    assert len(read_events(ev_file)) == 601  # the file went on to its end
    assert len(read_events(ev_cam)) >= 10
    assert (tmp_path / "door.annotated.mp4").stat().st_size > 0


def test_sources_file_and_names(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("- a.mp4\n- name: cam\n  url: rtsp://u@h/live\n- 0\n")
    specs = unique_names(load_sources(f))
    assert [s.name for s in specs] == ["a", "cam", "webcam0"]
    assert specs[0].spec == str(tmp_path / "a.mp4")  # relative to the sources file, like config paths
    assert [s.name for s in unique_names([SourceSpec("rtsp://h/x/cam1"), SourceSpec("rtsp://h2/cam1")])] == [
        "cam1", "cam1-2"]
    for bad, why in [("- {name: a}\n", "exactly one of"), ("- {path: a, fps: 3}\n", "unknown key 'fps'"),
                     ("{}\n", "expected a list"), ("- {path: a, max_frames: -1}\n", "max_frames")]:
        f.write_text(bad)
        with pytest.raises(ConfigError, match=why):
            load_sources(f)
    with pytest.raises(ConfigError, match="given twice"):
        unique_names([SourceSpec("a", name="x"), SourceSpec("b", name="x")])


def test_a_bad_source_among_several_stops_before_any_work(clips: dict[str, Path], tmp_path: Path) -> None:
    config = load_config(None).with_overrides({"output.dir": tmp_path, "output.progress": False})
    with pytest.raises(SourceError):
        Pipeline([SourceSpec(str(clips["vga"])), SourceSpec(str(tmp_path / "missing.mp4"))], config,
                 RunOptions()).run()
    assert not list(tmp_path.glob("*.mp4"))


def test_uint8_input_in_the_graph_matches_the_numpy_path(clips: dict[str, Path]) -> None:
    import cv2

    config = Config()
    plain = load_models(config)  # auto: off on a CPU
    uint8 = load_models(config.with_overrides({"runtime.uint8_input": "on"}))
    # The shipped detectors take uint8 themselves (test_inference); "on" leaves them as they are.
    assert uint8.detector.uint8_input and uint8.classifier.uint8_input and plain.detector.uint8_input
    assert not plain.classifier.uint8_input
    cap = cv2.VideoCapture(str(clips["quad"]))
    images = [cap.read()[1] for _ in range(5)]
    cap.release()
    want, got = plain.detector.detect(images), uint8.detector.detect(images)
    assert [len(d) for d in got] == [len(d) for d in want] == [4] * 5
    for a, b in zip(want, got, strict=True):
        for da, db in zip(a, b, strict=True):
            np.testing.assert_allclose(da.box_xyxy, db.box_xyxy, atol=1e-2)
            assert abs(da.score - db.score) < 1e-4
    w, h = plain.classifier.contract.input_size_wh
    crops = np.random.default_rng(2).integers(0, 255, (9, h, w), dtype=np.uint8)
    np.testing.assert_allclose(plain.classifier.classify(crops), uint8.classifier.classify(crops), atol=1e-5)


def test_detect_every_k_reuses_boxes_between_detections(clips: dict[str, Path], tmp_path: Path) -> None:
    config = load_config(None).with_overrides({"output.dir": tmp_path, "output.progress": False,
                                               "output.video": False, "runtime.detect_every": 3})
    summary = Pipeline([SourceSpec(str(clips["vga"]))], config, RunOptions()).run()[0]
    assert summary.frames_processed == 120 and summary.faces == 120
    lines = [json.loads(line) for line in summary.outputs[0].read_text().splitlines()]
    boxes = [r["faces"][0]["box_xyxy"] for r in lines]
    # Frames 3k+1 and 3k+2 keep frame 3k's box (classified again on their own pixels); 3k gets a new one.
    assert all(boxes[i] == boxes[i - i % 3] for i in range(120))
    assert len({tuple(b) for b in boxes}) >= 30


def test_a_recorder_opened_before_the_size_is_known_takes_the_first_frames(tmp_path: Path) -> None:
    import cv2

    from stream.render.record import VideoRecorder

    recorder = VideoRecorder(tmp_path / "cam.mp4", (0, 0), 30.0)  # a stream that said no size at open
    for i in range(10):
        recorder.write(np.full((240, 320, 3), 20 * i, np.uint8))
    recorder.close()
    cap = cv2.VideoCapture(str(tmp_path / "cam.mp4"))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (320, 240)
    assert sum(1 for _ in iter(lambda: cap.read()[0], False)) == 10


def test_a_paced_file_loops_as_a_live_camera(clips: dict[str, Path]) -> None:
    from stream.capture.paced import PacedFileSource
    from stream.capture.sources import FileSource

    source = PacedFileSource(FileSource(clips["noface"]))  # 40 frames at 25 fps
    source.open()
    t0 = time.perf_counter()
    times = [source.read()[1] for _ in range(50)]  # type: ignore[index]
    elapsed = time.perf_counter() - t0
    source.close()
    assert source.live and times == sorted(times) and times[45] > 1.7  # media time goes on across the loop
    assert elapsed > 1.5  # released at the clip's pace, not as fast as it decodes


def test_frames_scaled_on_the_capture_thread_give_the_same_faces(clips: dict[str, Path], tmp_path: Path) -> None:
    # The capture thread scales each frame for the detector as it decodes it (FaceDetector.prescale):
    # the detector given those gets the same faces, to the bit, as when it scales the frames itself:
    # one BlazeFace view (640x480), tiles (their whole-frame view), and none for YuNet's frames.
    import cv2

    from stream.infer.detect import FaceDetector

    models = load_models(Config())
    cap = cv2.VideoCapture(str(clips["quad"]))
    quad = [cap.read()[1] for _ in range(3)]
    cap.release()
    vga = cv2.resize(quad[0], (640, 480))
    tiles = FaceDetector.from_path(Config().detector.model, strategy="tiles")
    for detector, images in ((models.detector, [vga, quad[1]]), (tiles, quad)):
        video = [False] * len(images)  # video frames: one BlazeFace view up to 1600 px for auto
        prescaled = [detector.prescale(im, False) for im in images]
        assert all(p is not None and p.shape[2] == 3 for p in prescaled)
        want, got = detector.detect(images, video), detector.detect(images, video, prescaled=prescaled)
        assert [len(d) for d in got] == [len(d) for d in want] and sum(map(len, want)) >= 4
        for a, b in zip(want, got, strict=True):
            for da, db in zip(a, b, strict=True):
                np.testing.assert_array_equal(da.box_xyxy, db.box_xyxy)
                np.testing.assert_array_equal(da.keypoints_xy, db.keypoints_xy)
        if detector is models.detector:  # one view: used, not scaled again (blank, it finds no face)
            blank = [np.zeros_like(p) for p in prescaled]
            assert sum(map(len, detector.detect(images, video, prescaled=blank))) == 0
    assert models.detector.prescale(np.zeros((1080, 1920, 3), np.uint8), still=True) is None  # YuNet's

    seen: list[bool] = []

    class Sink:
        wants_images = False
        wants_stop = False

        def on_start(self, summaries: list) -> None: ...

        def on_result(self, result: object, summary: object) -> None:
            seen.append(result.frame.prescaled is not None)  # type: ignore[attr-defined]

        def on_source_end(self, summary: object) -> None: ...

    config = Config().with_overrides({"output.video": False, "output.events": False, "output.display": "off",
                                      "output.dir": str(tmp_path)})
    Pipeline([str(clips["vga"])], config, models=models, sinks=[Sink()]).run()
    assert len(seen) == 120 and all(seen)
