"""End to end: ``emostream train / evaluate / export`` on synthetic FER2013, FERPlus and
image-folder data, then ``emostream run --model`` with the trained model on a real clip.

The datasets are written in the real files' formats with textures a CNN learns in
a few epochs (tests/training_data.py); the small architecture keeps CI on 2 cores
within time. Accuracy far above chance means parsing, labels, pipeline, training,
evaluation and export are wired right; it says nothing about faces.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("tf2onnx")
import onnx
import onnxruntime as ort

from stream.commands import main
from stream.config import SAMPLE_CLIP
from stream.contract import CONTRACT_KEY, FER2013_LABELS, ModelContract
from tests.training_data import write_fer2013_csv, write_ferplus_pair, write_image_folder
from training.export import read_contract

CLIP = SAMPLE_CLIP
REPO_ROOT = Path(__file__).resolve().parent.parent
CHANCE_7 = 1 / 7

# Test-sized settings through a config file, as a user would keep them; flags override it.
CONFIG = """\
training:
  arch: recipe-small      # the default recipe takes ~1 s per step on 2 cores
  batch_size: 32
  learning_rate: 0.001
  epochs: 20
  early_stopping_patience: 3
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("training_data")
    write_ferplus_pair(d / "fer2013.csv", d / "fer2013new.csv", {"Training": 36, "PublicTest": 10,
                                                                  "PrivateTest": 10}, not_a_face=6, seed=1)
    (d / "config.yaml").write_text(CONFIG)
    return {"fer2013": d / "fer2013.csv", "ferplus": d / "fer2013new.csv", "config": d / "config.yaml", "dir": d}


@pytest.fixture(scope="module")
def fer_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One training run on FER2013 + FERPlus (majority labels, contempt merged)."""
    run_dir = tmp_path_factory.mktemp("runs") / "ferplus"
    code = main(["train", "--fer2013", str(data["fer2013"]), "--ferplus", str(data["ferplus"]),
                 "--out", str(run_dir), "--config", str(data["config"]), "--epochs", "8"])
    assert code == 0
    return run_dir


def _report(path: Path) -> dict:
    return json.loads(path.read_text())


def test_train_writes_the_run_folder(fer_run: Path) -> None:
    for name in ("model.keras", "model.onnx", "report.json", "confusion_matrix.png", "history.png",
                 "history.csv", "model.contract.json", "parity_images.npy", "last.keras", "state.json"):
        assert (fer_run / name).is_file(), name
    assert not list(fer_run.glob("*.partial.*"))  # every file written under a temporary name was renamed
    for picture in ("confusion_matrix.png", "history.png"):
        assert cv2.imread(str(fer_run / picture)) is not None
    report = _report(fer_run / "report.json")
    assert report["split"] == "test"
    assert report["labels"] == list(FER2013_LABELS)
    assert report["n_samples"] == 70
    assert report["accuracy"] > 0.8 > 5 * CHANCE_7 and report["macro_f1"] > 0.75
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (7, 7) and matrix.sum() == 70 and np.trace(matrix) / 70 == pytest.approx(
        report["accuracy"])
    assert set(report["per_class"]) == set(FER2013_LABELS)
    assert set(report["per_class"]["happy"]) == {"precision", "recall", "f1", "support"}
    training = report["training"]
    # the six not-a-face rows (3 Training, 3 PublicTest) were dropped
    assert training["dataset"]["sizes"] == {"train": 252, "val": 70, "test": 70}
    assert 1 <= training["best_epoch"] <= training["epochs_run"] <= 8
    assert training["settings"]["arch"] == "recipe-small" and training["settings"]["epochs"] == 8
    assert training["bn_recalibration"]["layers"] == 8
    assert report["validation"]["accuracy"] > 0.8
    assert report["export"]["max_abs_diff"] < 1e-4 and report["export"]["argmax_agreement"] == 1.0
    with open(fer_run / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    assert len(history) == training["epochs_run"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(history[0])


def test_trained_onnx_is_what_the_stream_reads(fer_run: Path) -> None:
    contract = read_contract(fer_run / "model.onnx")
    assert contract == ModelContract(labels=FER2013_LABELS, input_size_wh=(48, 48), color="gray",
                                     layout="NHWC", normalize_scale=1 / 255, normalize_offset=0.0,
                                     crop_margin=0.15, output="probabilities")
    proto = onnx.load(str(fer_run / "model.onnx"))
    assert CONTRACT_KEY in {p.key for p in proto.metadata_props}
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(fer_run / "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = np.load(fer_run / "parity_images.npy")[:5].astype(np.float32) / 255
    five = session.run(None, {name: x})[0]
    one = session.run(None, {name: x[:1]})[0]
    assert five.shape == (5, 7) and one.shape == (1, 7)
    np.testing.assert_allclose(one, five[:1], atol=1e-5)


@pytest.mark.parametrize("model_name", ["model.onnx", "model.keras"])
def test_evaluate_reproduces_the_test_score(fer_run: Path, data: dict[str, Path], tmp_path: Path,
                                            model_name: str) -> None:
    code = main(["evaluate", str(fer_run / model_name), "--fer2013", str(data["fer2013"]),
                 "--ferplus", str(data["ferplus"]), "--out", str(tmp_path)])
    assert code == 0
    report = _report(tmp_path / "report.json")
    trained = _report(fer_run / "report.json")
    assert report["split"] == "test" and report["n_samples"] == 70
    assert report["accuracy"] == pytest.approx(trained["accuracy"])
    assert report["confusion_matrix"] == trained["confusion_matrix"]
    assert (tmp_path / "confusion_matrix.png").is_file()


def test_evaluate_names_the_split(fer_run: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(fer_run / "model.onnx"), "--fer2013", str(data["fer2013"]),
                 "--ferplus", str(data["ferplus"]), "--split", "PublicTest"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("val split, 70 images: accuracy")
    # FER2013's own labels on the same images: the three not-a-face rows now count (and fail)
    assert main(["evaluate", str(fer_run / "model.onnx"), "--fer2013", str(data["fer2013"]),
                 "--split", "val"]) == 0
    assert capsys.readouterr().out.startswith("val split, 73 images")


def test_export_command_rebuilds_the_onnx_from_the_run(fer_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "again.onnx"
    assert main(["export", str(fer_run / "model.keras"), "--out", str(out)]) == 0
    assert read_contract(out) == read_contract(fer_run / "model.onnx")
    assert "argmax agreement 100.0%" in capsys.readouterr().out


def test_stream_runs_the_trained_model_on_a_real_clip(fer_run: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "run", str(CLIP), "--model", str(fer_run / "model.onnx"),
         "--output", str(tmp_path / "out.mp4"), "--events", str(events), "--no-display", "--max-frames", "20"],
        capture_output=True, text=True, timeout=180, cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    faces = [face for line in lines for face in line["faces"]]
    assert faces, "no face labelled in the clip"
    for face in faces:
        assert face["label"] in FER2013_LABELS
        assert set(face["probs"]) == set(FER2013_LABELS)


def test_train_on_a_folder_of_other_shapes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    classes = ["calm", "cheerful", "grumpy", "startled", "tired"]
    write_image_folder(tmp_path / "faces", classes, 40, seed=4)   # 64x64, 40x52, 96x80; gray PNG, colour JPEG
    run_dir = tmp_path / "run"
    assert main(["train", "--images", str(tmp_path / "faces"), "--out", str(run_dir), "--arch", "recipe-small",
                 "--input-size", "40", "--color", "rgb", "--class-weights", "--epochs", "10", "--batch-size", "16",
                 "--learning-rate", "0.001", "--seed", "3"]) == 0
    report = _report(run_dir / "report.json")
    assert report["labels"] == classes and report["split"] == "test"
    assert report["accuracy"] >= 0.75 and report["n_samples"] >= 10
    contract = read_contract(run_dir / "model.onnx")
    assert (contract.input_size_wh, contract.color, contract.labels) == ((40, 40), "rgb", tuple(classes))
    assert report["training"]["settings"]["class_weights"] is True
    capsys.readouterr()
    # The same hash split comes back for evaluation; the ONNX model reads the images itself.
    assert main(["evaluate", str(run_dir / "model.onnx"), "--images", str(tmp_path / "faces")]) == 0
    assert f"accuracy {100 * report['accuracy']:.2f}%" in capsys.readouterr().out


def test_train_soft_labels_with_contempt_as_a_class(tmp_path: Path) -> None:
    fer, plus = tmp_path / "fer.csv", tmp_path / "plus.csv"
    write_ferplus_pair(fer, plus, {"Training": 30, "PublicTest": 8, "PrivateTest": 8}, n_classes=8,
                       contempt_kind=7, seed=2)
    run_dir = tmp_path / "run"
    assert main(["train", "--fer2013", str(fer), "--ferplus", str(plus), "--label-mode", "soft",
                 "--no-merge-contempt", "--out", str(run_dir), "--arch", "recipe-small", "--epochs", "8",
                 "--batch-size", "32", "--learning-rate", "0.001"]) == 0
    report = _report(run_dir / "report.json")
    assert report["labels"] == [*FER2013_LABELS, "contempt"]
    assert report["per_class"]["contempt"]["support"] == 8
    assert report["accuracy"] > 0.6 > 4 / 8
    assert report["training"]["settings"]["label_mode"] == "soft"


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--fer2013", "{bad}", "--out", "{tmp}/r"], "missing column 'pixels'"),
    (["train", "--images", "{tmp}", "--ferplus", "{plus}", "--out", "{tmp}/r"], "--ferplus needs --fer2013"),
    (["train", "--fer2013", "{fer}", "--out", "{tmp}/r", "--bn-momentum", "fast"], "--bn-momentum"),
    (["train", "--fer2013", "{fer}", "--out", "{tmp}/r", "--bn-momentum", "1.5"], "bn_momentum: must be"),
    (["train", "--fer2013", "{fer}", "--out", "{tmp}/r", "--epochs", "0"], "training.epochs: must be > 0"),
    (["train", "--fer2013", "{fer}", "--ferplus", "{plus}", "--no-merge-contempt", "--out", "{tmp}/r"],
     r"classes \['contempt'\] have no training images"),
    (["train", "--fer2013", "{fer}", "--out", "{tmp}/r", "--arch", "vgg"], "unknown architecture 'vgg'"),
    (["evaluate", "{tmp}/missing.onnx", "--fer2013", "{fer}"], "does not exist"),
    (["export", "{tmp}/model.onnx", "--out", "{tmp}/x.onnx"], "expected a .keras or .h5 file"),
    (["train", "--fer2013", "{fer}", "--out", "{tmp}/r", "--init", "{tmp}/none.keras"],
     "--init model .* does not exist"),
    (["train", "--resume", "{tmp}", "--init", "{tmp}/model.onnx"], "--init starts a new run"),
])
def test_bad_input_is_one_line_and_exit_2(data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          argv: list[str], message: str) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("emotion,Usage\n3,Training\n")
    (tmp_path / "model.onnx").write_bytes(b"")
    values = {"bad": bad, "tmp": tmp_path, "fer": data["fer2013"], "plus": data["ferplus"]}
    assert main([a.format(**values) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("emostream: error: ")
    assert __import__("re").search(message, err[-1]), err[-1]


def test_evaluate_refuses_a_dataset_with_other_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      fer_run: Path) -> None:
    write_image_folder(tmp_path / "faces", ["a", "b"], 12)
    assert main(["evaluate", str(fer_run / "model.onnx"), "--images", str(tmp_path / "faces")]) == 2
    assert "labels do not match: the dataset has ['a', 'b']" in capsys.readouterr().err


def test_fer2013_only_labels(tmp_path: Path) -> None:
    """FER2013's own labels, no FERPlus: the seed project's original setting (short run)."""
    write_fer2013_csv(tmp_path / "fer.csv", {"Training": 24, "PublicTest": 6, "PrivateTest": 6}, seed=5)
    assert main(["train", "--fer2013", str(tmp_path / "fer.csv"), "--out", str(tmp_path / "run"),
                 "--arch", "recipe-small", "--epochs", "6", "--batch-size", "32", "--learning-rate", "0.001",
                 "--no-augment"]) == 0
    report = _report(tmp_path / "run" / "report.json")
    assert report["training"]["dataset"]["notes"] == ["FER2013 labels"]
    assert report["accuracy"] > 3 * CHANCE_7


def test_same_seed_same_run(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "faces", ["a", "b", "c"], 16, seed=6)
    histories = []
    for name in ("one", "two"):
        assert main(["train", "--images", str(tmp_path / "faces"), "--out", str(tmp_path / name), "--arch",
                     "recipe-small", "--epochs", "2", "--batch-size", "16", "--seed", "11"]) == 0
        histories.append((tmp_path / name / "history.csv").read_text())
    assert histories[0] == histories[1]


def test_camera_augmentations_train_and_repeat_with_the_seed(tmp_path: Path) -> None:
    # zoom, brightness, contrast and low_res from the config file, inside the real tf.data pipeline:
    # the run trains, and the same seed gives the same history.
    write_image_folder(tmp_path / "faces", ["a", "b", "c"], 16, seed=7)
    (tmp_path / "aug.yaml").write_text("training:\n  zoom: 0.1\n  brightness: 0.2\n  contrast: 0.3\n"
                                       "  low_res: 0.5\n")
    histories = []
    for name in ("one", "two"):
        assert main(["train", "--images", str(tmp_path / "faces"), "--out", str(tmp_path / name), "--arch",
                     "recipe-small", "--epochs", "2", "--batch-size", "16", "--seed", "5",
                     "--config", str(tmp_path / "aug.yaml")]) == 0
        histories.append((tmp_path / name / "history.csv").read_text())
    assert histories[0] == histories[1]
    settings = _report(tmp_path / "one" / "report.json")["training"]["settings"]
    assert (settings["zoom"], settings["brightness"], settings["contrast"], settings["low_res"]) == (0.1, 0.2, 0.3, 0.5)


def test_fine_tune_from_a_trained_model(fer_run: Path, data: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # --init starts from a trained model's weights: with a vanishing learning rate one epoch leaves its
    # kernels as they were and its test accuracy where it was; a model that does not fit is one line.
    import keras

    tuned = tmp_path / "tuned"
    assert main(["train", "--fer2013", str(data["fer2013"]), "--ferplus", str(data["ferplus"]), "--out", str(tuned),
                 "--config", str(data["config"]), "--init", str(fer_run / "model.keras"), "--epochs", "1",
                 "--learning-rate", "1e-12", "--no-augment", "--bn-recalibration-samples", "0"]) == 0
    before = keras.models.load_model(fer_run / "model.keras", compile=False)
    after = keras.models.load_model(tuned / "model.keras", compile=False)
    kernels = [(a, b) for a, b in zip(before.weights, after.weights, strict=True) if "kernel" in a.path]
    assert kernels and all(np.allclose(a.numpy(), b.numpy(), atol=1e-6) for a, b in kernels)
    assert abs(_report(tuned / "report.json")["accuracy"] - _report(fer_run / "report.json")["accuracy"]) <= 0.15
    write_image_folder(tmp_path / "faces", ["a", "b"], 12)
    capsys.readouterr()
    assert main(["train", "--images", str(tmp_path / "faces"), "--out", str(tmp_path / "other"), "--arch",
                 "recipe-small", "--epochs", "1", "--init", str(fer_run / "model.keras")]) == 2
    assert "does not fit this run" in capsys.readouterr().err
