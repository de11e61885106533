"""Threads and failure paths: every stage ends, errors reach the caller, outputs are finalised."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.capture import CaptureThread
from stream.config import Config
from stream.errors import SourceError
from stream.infer import EmotionClassifier, FaceDetector
from stream.pipeline import Models, Pipeline, RunOptions, RunSummary, SourceSpec
from stream.records import EndOfStream, Frame, StageError
from stream.render.outputs import partial_path
from tests.conftest import REPO


class FakeSource:
    """Synthetic frames; optionally raises after ``fail_after`` frames. Records its close."""

    def __init__(self, n: int, live: bool = False, fail_after: int | None = None) -> None:
        self.name, self.live, self.fps, self.size_wh = "fake", live, 30.0, (64, 48)
        self.frame_count, self.warning = n, ""
        self.n, self.fail_after, self.i = n, fail_after, 0
        self.closed = threading.Event()

    def open(self) -> None:
        pass

    def read(self) -> tuple[np.ndarray, float] | None:
        if self.fail_after is not None and self.i >= self.fail_after:
            raise SourceError("fake source died")
        if self.i >= self.n:
            return None
        image = np.full((48, 64, 3), self.i % 256, np.uint8)
        self.i += 1
        return image, self.i / 30.0

    def close(self) -> None:
        self.closed.set()


def drain(q, timeout_s: float = 10.0) -> list:
    items = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        item = q.get(timeout=timeout_s)
        items.append(item)
        if isinstance(item, (EndOfStream, StageError)):
            return items
    raise AssertionError("no end marker")


def test_file_capture_is_lossless_and_ordered() -> None:
    source = FakeSource(50)
    with CaptureThread(source, maxsize=3, stop=threading.Event()) as capture:
        items = drain(capture.frames)
    frames = [i for i in items if isinstance(i, Frame)]
    assert [f.index for f in frames] == list(range(50))
    assert isinstance(items[-1], EndOfStream) and items[-1].reason == "eof"
    assert capture.dropped == 0 and source.closed.is_set()


def test_live_capture_keeps_the_newest_and_counts_drops() -> None:
    source = FakeSource(200, live=True)
    capture = CaptureThread(source, maxsize=2, stop=threading.Event()).start()
    assert source.closed.wait(10)  # let it run to the end without a consumer
    items = drain(capture.frames)
    capture.close()
    frames = [i for i in items if isinstance(i, Frame)]
    assert [f.index for f in frames] == [198, 199][-len(frames):]
    assert capture.dropped == 200 - len(frames)


def test_capture_error_is_delivered_as_a_marker() -> None:
    source = FakeSource(100, fail_after=5)
    with CaptureThread(source, maxsize=10, stop=threading.Event()) as capture:
        items = drain(capture.frames)
    assert len(items) == 6 and isinstance(items[-1], StageError)
    assert "fake source died" in str(items[-1].error) and source.closed.is_set()


def test_close_does_not_hang_on_a_full_queue() -> None:
    source = FakeSource(10_000)
    capture = CaptureThread(source, maxsize=2, stop=threading.Event()).start()
    time.sleep(0.05)  # the producer is now blocked on the full queue (nothing waits for it to get there)
    t0 = time.monotonic()
    capture.close()
    assert time.monotonic() - t0 < 2 and source.closed.is_set()


class FailingDetector:
    """Wraps the real detector; raises on the third batch."""

    def __init__(self, real: FaceDetector) -> None:
        self.real, self.calls = real, 0

    def detect(self, images: list[np.ndarray], still: list[bool] | None = None, sources: list[int] | None = None,
               prescaled: list | None = None):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("detector exploded")
        return self.real.detect(images, still, sources, prescaled)


@pytest.fixture(scope="module")
def models() -> Models:
    config = Config()
    return Models(FaceDetector.from_path(config.detector.model), EmotionClassifier.from_path(config.classifier.model))


def run_one(spec: SourceSpec, config: Config, options: RunOptions, models: Models) -> RunSummary:
    (summary,) = Pipeline([spec], config, options, models).run()
    if summary.error is not None:
        raise summary.error
    return summary


def test_inference_error_stops_everything_and_reaches_the_caller(models: Models, clips: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    broken = Models(FailingDetector(models.detector), models.classifier)  # type: ignore[arg-type]
    config = Config().with_overrides({"runtime.batch_size": 4, "output.progress": False})
    out, ev = tmp_path / "o.mp4", tmp_path / "e.jsonl"
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="detector exploded"):
        run_one(SourceSpec(str(clips["vga601"]), output=out, events=ev), config, RunOptions(display=False), broken)
    assert time.monotonic() - t0 < 20
    assert not [t.name for t in threading.enumerate() if t.name in ("capture", "inference")]  # both ended
    # A failed run publishes nothing (an earlier file with those names would stay as it was): what it
    # wrote is finalised under the partial names.
    assert not out.exists() and not ev.exists()
    out, ev = partial_path(out), partial_path(ev)
    written = len(ev.read_text().splitlines())
    assert 2 <= written <= 8  # two good batches of up to four frames, then the error
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == written  # the video was finalised and is playable


def test_max_frames_and_interrupt(models: Models, clips: dict[str, Path], tmp_path: Path) -> None:
    # output.dir: the run below without --output must not write into the repository's out/.
    config = Config().with_overrides({"output.progress": False, "output.dir": tmp_path})
    spec = SourceSpec(str(clips["vga"]), output=tmp_path / "a.mp4", events=tmp_path / "a.jsonl")
    summary = run_one(spec, config, RunOptions(display=False, max_frames=17), models)
    assert summary.frames_processed == 17 and len((tmp_path / "a.jsonl").read_text().splitlines()) == 17
    stop = threading.Event()
    stop.set()
    summary = run_one(SourceSpec(str(clips["vga"]), events=tmp_path / "b.jsonl"), config,
                      RunOptions(display=False, interrupt=stop), models)
    assert summary.interrupted and summary.frames_processed == 0


def test_public_names_import() -> None:
    import stream

    assert stream.__all__ == sorted(stream.__all__)
    for name in stream.__all__:
        assert getattr(stream, name) is not None
    assert (REPO / "stream" / "py.typed").is_file()
