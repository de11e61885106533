"""FERPlus folders, label rules, plurality vs majority scoring, calibration and the 'uncertain' label.

CI has no FERPlus: the folders here are hand-made (48x48 PNGs and label.csv
files in tmp_path). One test at the end checks the shipped model's documented
scores and runs only where ``../shared/datasets/ferplus`` exists.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.config import MODELS_DIR
from stream.contract import FER2013_LABELS, ModelContract, calibrated
from stream.errors import DataError, ModelError
from stream.infer.classify import CropSpec, EmotionClassifier, crop_faces
from stream.labels import UNCERTAIN, face_label
from tests.conftest import REPO, run_cli
from training.calibrate import (
    expected_calibration_error,
    fit_temperature,
    write_temperature,
)
from training.data import FERPLUS_FOLDERS, ferplus_majority_mask, load_ferplus_dir
from training.evaluate import evaluate_model, load_predictor

MODEL = MODELS_DIR / "emotion_minixception.onnx"
CLIP = REPO / "stream" / "assets" / "carphone_640x480.mp4"
FERPLUS = REPO.parent / "shared" / "datasets" / "ferplus"

#  votes: neutral happiness surprise sadness anger disgust fear contempt unknown NF
ROWS: list[tuple[str, list[int]]] = [
    ("happy_clear", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),          # kept; majority
    ("happy_split", [3, 4, 3, 0, 0, 0, 0, 0, 0, 0]),           # kept (plurality happy); not majority
    ("not_a_face", [1, 0, 0, 0, 0, 0, 0, 0, 0, 9]),            # dropped: NF on top
    ("unknown_top", [2, 0, 0, 0, 0, 0, 0, 0, 6, 2]),           # dropped: unknown on top
    ("no_votes", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),              # dropped: no votes
    ("tie_unknown", [0, 0, 0, 3, 0, 0, 0, 0, 3, 0]),           # kept: a tie goes to the emotion (sad)
    ("contempt_top", [2, 0, 0, 0, 0, 0, 0, 5, 0, 0]),          # neutral when merged; contempt when kept
    ("fear_singles", [0, 1, 1, 1, 0, 0, 4, 0, 1, 1]),          # majority after singles dropped: 4 of 4
]
KEPT = ["happy_clear", "happy_split", "tie_unknown", "contempt_top", "fear_singles"]


def write_ferplus(root: Path, rows: list[tuple[str, list[int]]] = ROWS,
                  folders: tuple[str, ...] = ("train", "val", "test")) -> Path:
    """A FERPlus folder as Microsoft's scripts write it, with one PNG per row."""
    rng = np.random.default_rng(0)
    for split in folders:
        folder = root / FERPLUS_FOLDERS[split]
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for name, votes in rows:
            cv2.imwrite(str(folder / f"{name}.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))
            lines.append(",".join([f"{name}.png", '"(0, 0, 48, 48)"', *map(str, votes)]))
        (folder / "label.csv").write_text("\n".join(lines) + "\n")
    return root


# --------------------------------------------------------------------------- reader and label rules


def test_ferplus_dir_keeps_and_drops_rows_and_keeps_votes(tmp_path: Path) -> None:
    data = load_ferplus_dir(write_ferplus(tmp_path))
    assert data.labels == FER2013_LABELS
    test = data.split("test")
    assert len(test) == len(KEPT) and test.images.shape[1:] == (48, 48, 1)
    assert [data.labels[i] for i in test.label_index] == ["happy", "happy", "sad", "neutral", "fear"]
    expected_votes = np.array([v for n, v in ROWS if n in KEPT], np.float32)
    np.testing.assert_array_equal(test.votes, expected_votes)
    assert any("9 of 24 images dropped" in note for note in data.notes)  # 3 of 8 in each split


def test_ferplus_dir_images_are_the_pngs_named_in_label_csv(tmp_path: Path) -> None:
    root = write_ferplus(tmp_path, folders=("test",))
    data = load_ferplus_dir(root, splits=("test",))
    first = cv2.imread(str(root / "FER2013Test" / "happy_clear.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(data.split("test").images[0, ..., 0], first)
    assert set(data.splits) == {"test"}


def test_contempt_kept_as_an_eighth_class(tmp_path: Path) -> None:
    data = load_ferplus_dir(write_ferplus(tmp_path, folders=("test",)), merge_contempt=False, splits=("test",))
    assert data.labels == (*FER2013_LABELS, "contempt")
    labels = [data.labels[i] for i in data.split("test").label_index]
    assert labels[KEPT.index("contempt_top")] == "contempt"


def test_soft_targets_are_vote_shares_with_contempt_merged(tmp_path: Path) -> None:
    data = load_ferplus_dir(write_ferplus(tmp_path, folders=("test",)), label_mode="soft", splits=("test",))
    targets = data.split("test").targets
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-6)
    split_row = targets[KEPT.index("happy_split")]
    assert split_row[FER2013_LABELS.index("happy")] == pytest.approx(0.4)
    assert split_row[FER2013_LABELS.index("neutral")] == pytest.approx(0.3)
    assert split_row[FER2013_LABELS.index("surprise")] == pytest.approx(0.3)
    contempt_row = targets[KEPT.index("contempt_top")]
    assert contempt_row[FER2013_LABELS.index("neutral")] == pytest.approx(1.0)  # 2 neutral + 5 contempt


def test_plurality_and_majority_masks_on_the_folder(tmp_path: Path) -> None:
    test = load_ferplus_dir(write_ferplus(tmp_path, folders=("test",)), splits=("test",)).split("test")
    assert test.votes is not None
    mask = ferplus_majority_mask(test.votes, merge_contempt=False)
    assert [n for n, m in zip(KEPT, mask, strict=True) if m] == ["happy_clear", "contempt_top", "fear_singles"]


@pytest.mark.parametrize(
    ("votes", "merge", "kept"),
    [
        ([0, 10, 0, 0, 0, 0, 0, 0, 0, 0], True, True),       # unanimous
        ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], True, False),       # exactly half is not more than half
        ([6, 4, 0, 0, 0, 0, 0, 0, 0, 0], True, True),
        ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], False, False),      # only single votes: nothing left
        ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], True, True),        # merged first: neutral + contempt = 2 survives
        ([0, 2, 1, 1, 1, 1, 1, 1, 1, 1], True, True),        # singles dropped: 2 of 2
        ([0, 0, 0, 0, 0, 0, 0, 0, 6, 4], True, False),       # unknown holds the majority
        ([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], True, False),      # not a face
        ([3, 0, 0, 0, 0, 0, 0, 3, 0, 2], True, True),        # merged: neutral 6 of 8
        ([3, 0, 0, 0, 0, 0, 0, 3, 0, 2], False, False),      # apart: 3 of 8
        ([0, 0, 0, 0, 0, 0, 0, 0, 0, 0], True, False),       # no votes
    ],
)
def test_ferplus_majority_mask_rows(votes: list[int], merge: bool, kept: bool) -> None:
    assert bool(ferplus_majority_mask(np.array([votes]), merge_contempt=merge)[0]) is kept


def test_ferplus_majority_mask_rejects_wrong_columns() -> None:
    with pytest.raises(DataError, match="10 columns"):
        ferplus_majority_mask(np.zeros((2, 9)))


@pytest.mark.parametrize(
    ("write", "fragment"),
    [
        (lambda f: (f / "label.csv").write_text('a.png,"(0, 0, 48, 48)",1,2,3\n'), "5 fields, expected 12"),
        (lambda f: (f / "label.csv").write_text('a.png,"(0, 0, 48, 48)",1,2,x,0,0,0,0,0,0,0\n'),
         "must be numbers"),
        (lambda f: (f / "label.csv").write_text('a.png,"(0, 0, 48, 48)",1,-2,0,0,0,0,0,0,0,0\n'), "negative"),
        (lambda f: (f / "label.csv").write_text(""), "no rows"),
        (lambda f: (f / "label.csv").write_bytes(b"\xff\xfe\x00bad"), "not a valid CSV"),
        (lambda f: (f / "label.csv").unlink(), "could not be read"),
        (lambda f: (f / "happy_clear.png").unlink(), "missing or not an image"),
        (lambda f: (f / "happy_clear.png").write_text("not a png"), "missing or not an image"),
    ],
    ids=["few-fields", "not-a-number", "negative", "empty", "not-utf8", "no-label-csv", "no-image", "bad-image"],
)
def test_malformed_ferplus_folder_is_a_data_error(tmp_path: Path, write, fragment: str) -> None:
    root = write_ferplus(tmp_path, folders=("test",))
    write(root / "FER2013Test")
    with pytest.raises(DataError, match=fragment):
        load_ferplus_dir(root, splits=("test",))


def test_missing_ferplus_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_ferplus_dir(tmp_path / "nope")


# --------------------------------------------------------------------------- evaluation


class _FixedPredictor:
    """Predicts a fixed label per image index order (stand-in for a model)."""

    def __init__(self, predicted: list[str], mirrored: list[str] | None = None) -> None:
        self.contract = ModelContract(labels=FER2013_LABELS, input_size_wh=(48, 48))
        self.name = "fixed"
        self.predicted, self.mirrored = predicted, mirrored or predicted
        self.calls = 0

    def predict(self, images: np.ndarray, *, source_color: str) -> np.ndarray:
        names = self.predicted if self.calls == 0 else self.mirrored
        self.calls += 1
        p = np.full((len(images), len(FER2013_LABELS)), 0.02, np.float32)
        for i, name in enumerate(names):
            p[i, FER2013_LABELS.index(name)] = 1 - 0.02 * (len(FER2013_LABELS) - 1)
        return p


def test_evaluate_reports_plurality_and_majority_side_by_side(tmp_path: Path) -> None:
    data = load_ferplus_dir(write_ferplus(tmp_path, folders=("test",)), splits=("test",))
    # Right on happy_clear, happy_split, tie_unknown; wrong on contempt_top and fear_singles.
    predictor = _FixedPredictor(["happy", "happy", "sad", "angry", "angry"],
                                mirrored=["happy", "happy", "sad", "neutral", "angry"])
    report = evaluate_model(predictor, data, "test", tta_flip=True)
    d = report.to_dict()
    assert d["plurality"] == {"accuracy": pytest.approx(3 / 5), "n_samples": 5}
    assert d["accuracy"] == pytest.approx(3 / 5)
    assert d["majority_rule"]["n_samples"] == 3  # happy_clear, contempt_top, fear_singles
    assert d["majority_rule"]["accuracy"] == pytest.approx(1 / 3)
    assert d["calibration"]["temperature"] == 1.0 and 0.0 <= d["calibration"]["ece"] <= 1.0
    # Flip averaging: contempt_top gets 0.5 angry, 0.5 neutral; argmax takes the first (angry), still wrong.
    assert d["tta_flip"]["accuracy"] == pytest.approx(3 / 5)
    assert d["tta_flip"]["majority_rule"]["n_samples"] == 3
    json.dumps(d)  # the report is JSON-ready


# --------------------------------------------------------------------------- calibration


def test_temperature_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(1)
    n, k, true_t = 20000, 7, 2.0
    logits = rng.normal(0, 2.0, (n, k))
    p_true = calibrated(logits, output="logits")
    labels = np.array([rng.choice(k, p=row / row.sum()) for row in p_true.astype(np.float64)])
    overconfident = calibrated(logits * true_t, output="logits")  # what a model that is T times too sure says
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(true_t, rel=0.05)
    before = expected_calibration_error(overconfident, labels)
    after = expected_calibration_error(calibrated(overconfident, temperature=t), labels)
    assert after < 0.02 < before


def test_ece_by_hand() -> None:
    # Two faces at confidence 0.9 (one right), two at 0.6 (both right): |0.5-0.9|*2/4 + |1-0.6|*2/4 = 0.4.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    truth = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, truth) == pytest.approx(0.4)
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0, np.int64)) == 0.0


@pytest.mark.parametrize("temperature", [0.01, 0.675, 1.7, 50.0])
@pytest.mark.parametrize("bias", [None, [1.85, 2.95, 3.9, 0.0, -0.25, 0.25, 0.0]])
def test_calibrated_probabilities_match_scaled_logits(temperature: float, bias: list[float] | None) -> None:
    z = np.random.default_rng(2).normal(0, 3, (50, 7)).astype(np.float32)
    p = calibrated(z, output="logits")
    got = calibrated(p, temperature=temperature, logit_bias=bias)
    np.testing.assert_allclose(got, calibrated(z, output="logits", temperature=temperature, logit_bias=bias),
                               atol=1e-5)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)  # T = 0.01: p ** 100 would underflow unscaled
    assert np.array_equal(calibrated(p), p)  # T = 1 leaves probabilities alone


def test_temperature_round_trips_through_onnx_metadata(tmp_path: Path) -> None:
    out = tmp_path / "calibrated.onnx"
    contract = write_temperature(MODEL, out, 1.5)
    assert contract.temperature == 1.5
    original = EmotionClassifier.from_path(MODEL)
    scaled = EmotionClassifier.from_path(out)
    assert original.contract.temperature == 1.0  # an older model without the field reads as 1
    assert scaled.contract.temperature == 1.5
    assert load_predictor(out).contract.temperature == 1.5
    crops = np.random.default_rng(3).integers(0, 256, (4, 64, 64), dtype=np.uint8)
    raw = original.classify(crops)
    np.testing.assert_allclose(scaled.classify(crops), calibrated(raw, temperature=1.5), atol=1e-5)
    assert (scaled.classify(crops).argmax(axis=1) == raw.argmax(axis=1)).all()


@pytest.mark.parametrize("value", [0, -1, "nan", "inf", "warm"])
def test_bad_temperature_in_the_contract(value: object) -> None:
    data = json.loads(ModelContract(labels=FER2013_LABELS, input_size_wh=(64, 64)).to_json())
    data["temperature"] = float(value) if value in ("nan", "inf") else value
    with pytest.raises(ModelError, match=r"temperature|invalid"):
        ModelContract.from_json(json.dumps(data))


def test_write_temperature_refuses_a_bad_value(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="temperature"):
        write_temperature(MODEL, tmp_path / "x.onnx", 0.0)
    assert not (tmp_path / "x.onnx").exists()


def test_write_temperature_keeps_the_other_metadata_entries(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    source, out = tmp_path / "tagged.onnx", tmp_path / "calibrated.onnx"
    proto = onnx.load(str(MODEL))
    proto.metadata_props.add(key="author", value="someone")
    onnx.save(proto, str(source))
    write_temperature(source, out, 1.5)
    written = onnx.load(str(out))
    keys = [p.key for p in written.metadata_props]
    assert keys == [p.key for p in proto.metadata_props]  # the same entries, in the same order, each once
    assert {p.key: p.value for p in written.metadata_props}["author"] == "someone"
    assert ModelContract.from_proto(written).temperature == 1.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calibrated.onnx", "tagged.onnx"]  # no partial file left


def test_contract_read_and_written_on_a_model_proto() -> None:
    onnx = pytest.importorskip("onnx")
    proto = onnx.load(str(MODEL))
    contract = ModelContract.from_proto(proto)
    assert contract == EmotionClassifier.from_path(MODEL).contract  # as the stream reads the file
    proto.metadata_props.add(key="author", value="someone")
    changed = ModelContract(labels=("a", "b"), input_size_wh=(32, 32))
    changed.write_to(proto)
    assert ModelContract.from_proto(proto) == changed
    assert "author" in {p.key for p in proto.metadata_props}
    changed.write_to(proto, keep_others=False)
    assert [p.key for p in proto.metadata_props] == ["emostream.contract"]
    del proto.metadata_props[:]
    with pytest.raises(ModelError, match=r"tagged has no 'emostream\.contract' metadata"):
        ModelContract.from_proto(proto, origin="tagged")


def test_calibrate_command_end_to_end(tmp_path: Path) -> None:
    root = write_ferplus(tmp_path / "ferplus", folders=("val", "test"))
    out, report = tmp_path / "cal.onnx", tmp_path / "cal.json"
    proc = run_cli("calibrate", str(MODEL), "--ferplus-dir", str(root), "--out", str(out), "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    assert "ECE (15 bins)" in proc.stdout
    numbers = json.loads(report.read_text())
    assert numbers["fit_n"] == numbers["eval_n"] == len(KEPT)
    assert EmotionClassifier.from_path(out).contract.temperature == pytest.approx(numbers["temperature"])
    assert math.isfinite(numbers["ece_before"]) and math.isfinite(numbers["ece_after"])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (lambda t: [str(t / "model.keras"), "--ferplus-dir", str(t)], "must be an .onnx"),
        (lambda t: [str(MODEL), "--ferplus-dir", str(t / "nope")], "does not exist"),
    ],
    ids=["not-onnx", "no-folder"],
)
def test_calibrate_bad_input_one_line_exit_2(tmp_path: Path, args, fragment: str) -> None:
    proc = run_cli("calibrate", *args(tmp_path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- crop offset


def test_crop_offset_moves_the_crop_down_by_box_sides() -> None:
    image = np.repeat(np.arange(200, dtype=np.uint8)[:, None], 200, axis=1)  # row index as brightness
    image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    box = np.array([50.0, 50.0, 150.0, 150.0])
    plain = crop_faces(image, [box], CropSpec((100, 100), "gray", 0.0))[0]
    moved = crop_faces(image, [box], CropSpec((100, 100), "gray", 0.0, crop_offset_y=-0.2))[0]
    assert int(plain[50, 50]) - int(moved[50, 50]) == 20  # 0.2 box sides of 100 px, upwards
    data = json.loads(ModelContract(labels=FER2013_LABELS, input_size_wh=(64, 64), crop_offset_y=-0.1).to_json())
    assert ModelContract.from_json(json.dumps(data)).crop_offset_y == -0.1
    data["crop_offset_y"] = 3
    with pytest.raises(ModelError, match="crop_offset_y"):
        ModelContract.from_json(json.dumps(data))


# --------------------------------------------------------------------------- uncertain label


@pytest.mark.parametrize(
    ("probs", "threshold", "expected"),
    [
        ([0.2, 0.7, 0.1], 0.0, "b"),
        ([0.2, 0.7, 0.1], 0.7, "b"),
        ([0.2, 0.7, 0.1], 0.71, UNCERTAIN),
        ([0.4, 0.3, 0.3], 0.5, UNCERTAIN),
    ],
)
def test_face_label(probs: list[float], threshold: float, expected: str) -> None:
    assert face_label(np.array(probs), ("a", "b", "c"), threshold) == expected


def test_uncertain_in_the_event_log_video_and_summary_of_a_real_run(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("classifier:\n  uncertain_below: 0.999\n")
    events = tmp_path / "e.jsonl"
    proc = run_cli("run", str(CLIP), "--config", str(config), "--max-frames", "10", "--events", str(events),
                   "--output", str(tmp_path / "o.mp4"), "--no-display")
    assert proc.returncode == 0, proc.stderr
    faces = [f for line in events.read_text().splitlines() for f in json.loads(line)["faces"]]
    assert faces and all(f["label"] == UNCERTAIN for f in faces)
    assert all(sum(f["probs"].values()) == pytest.approx(1.0, abs=1e-3) for f in faces)  # probs kept
    assert f"{UNCERTAIN} 100%" in proc.stdout + proc.stderr  # the run summary


def test_uncertain_below_is_validated(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("classifier:\n  uncertain_below: 1.5\n")
    proc = run_cli("run", str(CLIP), "--config", str(config), "--max-frames", "1", "--no-display")
    assert proc.returncode == 2 and "classifier.uncertain_below" in proc.stderr


# --------------------------------------------------------------------------- the shipped model on real FERPlus

#: Scores the lead documents for the shipped default (``models/ferplus_scores.json``):
#: {"model": "emotion_....onnx", "plurality_accuracy": 0.xx, "majority_rule_accuracy": 0.xx}
SCORES = REPO / "models" / "ferplus_scores.json"


@pytest.mark.skipif(not (FERPLUS / "FER2013Test" / "label.csv").is_file(),
                    reason=f"FERPlus is not here ({FERPLUS}); it is never part of the repository")
@pytest.mark.skipif(not SCORES.is_file(), reason=f"no documented scores to check ({SCORES.name})")
def test_shipped_model_scores_as_documented() -> None:
    expected = json.loads(SCORES.read_text())
    data = load_ferplus_dir(FERPLUS, splits=("test",))
    predictor = load_predictor(MODELS_DIR / expected["model"])
    report = evaluate_model(predictor, data.converted(predictor.contract.input_size_wh, predictor.contract.color),
                            "test").to_dict()
    assert 100 * report["accuracy"] == pytest.approx(100 * expected["plurality_accuracy"], abs=0.5)
    assert 100 * report["majority_rule"]["accuracy"] == pytest.approx(100 * expected["majority_rule_accuracy"],
                                                                      abs=0.5)


def test_crop_framing_benchmark_without_ferplus_says_so(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "crop_framing.py"), "--ferplus-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "FER2013Test/label.csv" in proc.stderr
