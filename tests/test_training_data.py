"""Datasets for training: FER2013 / FERPlus parsing and merge rules, image folders, errors.

None of these tests imports TensorFlow.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.config import load_config
from stream.contract import FER2013_LABELS, ModelContract
from stream.errors import ConfigError, DataError
from tests.training_data import (
    FERPLUS_COLUMNS,
    make_images,
    write_fer2013_csv,
    write_ferplus_pair,
    write_image_folder,
)
from training.data import (
    convert_images,
    ferplus_labels,
    ferplus_targets,
    load_dataset,
    load_fer2013,
    load_image_folder,
    normalize_split_name,
    prepare_images,
)

REPO = Path(__file__).resolve().parent.parent
EMOTIONS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")


def votes(**counts: int) -> list[int]:
    """One FERPlus vote row in file column order (8 emotions, unknown, NF)."""
    return [counts.get(c, 0) for c in (*EMOTIONS, "unknown", "NF")]


# --------------------------------------------------------------------------- FERPlus rules


@pytest.mark.parametrize(
    ("row", "merge", "expected"),
    [
        # contempt counts as neutral: 3 + 4 beat happiness 5
        (votes(neutral=3, contempt=4, happiness=5), True, "neutral"),
        # ... unless kept apart: happiness 5 beats contempt 4 and neutral 3
        (votes(neutral=3, contempt=4, happiness=5), False, "happy"),
        (votes(contempt=6, neutral=4), False, "contempt"),
        (votes(contempt=6, neutral=4), True, "neutral"),
        # FERPlus names map to FER2013's
        (votes(anger=7, sadness=3), True, "angry"),
        (votes(sadness=7, fear=3), True, "sad"),
        (votes(surprise=9, unknown=1), True, "surprise"),
        # top vote unknown or NF: dropped
        (votes(unknown=6, happiness=4), True, None),
        (votes(NF=10), True, None),
        (votes(NF=5, fear=4, unknown=1), True, None),
        # a tie between an emotion and unknown goes to the emotion
        (votes(happiness=5, unknown=5), True, "happy"),
        # no votes at all: dropped
        (votes(), True, None),
        # a tie between emotions goes to the first in FERPlus column order
        (votes(neutral=5, happiness=5), True, "neutral"),
        (votes(disgust=4, anger=4, unknown=2), True, "angry"),
    ],
)
def test_ferplus_majority_rules(row: list[int], merge: bool, expected: str | None) -> None:
    keep, targets = ferplus_targets(np.array([row]), label_mode="majority", merge_contempt=merge)
    labels = ferplus_labels(merge)
    if expected is None:
        assert not keep[0] and targets.shape == (0, len(labels))
    else:
        assert keep[0]
        assert targets.shape == (1, len(labels))
        assert labels[int(np.argmax(targets[0]))] == expected
        assert targets.sum() == 1.0 and targets.max() == 1.0


def test_ferplus_soft_labels_are_the_emotion_vote_shares() -> None:
    rows = np.array([
        votes(happiness=6, sadness=2, unknown=2),          # unknown votes are not part of the shares
        votes(neutral=2, contempt=2, surprise=4),          # contempt merged: neutral 4, surprise 4
        votes(NF=7, happiness=3),                          # dropped
    ])
    keep, soft = ferplus_targets(rows, label_mode="soft", merge_contempt=True)
    assert keep.tolist() == [True, True, False]
    labels = ferplus_labels(True)
    assert labels == FER2013_LABELS
    first = dict(zip(labels, soft[0].tolist(), strict=True))
    assert first["happy"] == pytest.approx(0.75) and first["sad"] == pytest.approx(0.25)
    second = dict(zip(labels, soft[1].tolist(), strict=True))
    assert second["neutral"] == pytest.approx(0.5) and second["surprise"] == pytest.approx(0.5)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)


def test_ferplus_labels_follow_fer2013_order_with_contempt_last() -> None:
    assert ferplus_labels(True) == FER2013_LABELS
    assert ferplus_labels(False) == (*FER2013_LABELS, "contempt")


# --------------------------------------------------------------------------- FER2013 files


def test_fer2013_official_splits_and_pixels(tmp_path: Path) -> None:
    per = {"Training": 5, "PublicTest": 3, "PrivateTest": 2}
    emotions = write_fer2013_csv(tmp_path / "fer.csv", per, seed=3)
    data = load_fer2013(tmp_path / "fer.csv")
    assert data.labels == FER2013_LABELS and data.color == "gray" and data.size_wh == (48, 48)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 35, "val": 21, "test": 14}
    assert data.split("PrivateTest") is data.splits["test"]
    # rows keep file order within a split, labels are the emotion column
    np.testing.assert_array_equal(data.splits["train"].label_index, emotions[:35])
    with open(tmp_path / "fer.csv", newline="") as fh:
        first = next(r for r in csv.DictReader(fh) if r["Usage"] == "PublicTest")
    expected = np.array(first["pixels"].split(), dtype=np.uint8).reshape(48, 48)
    np.testing.assert_array_equal(data.splits["val"].images[0, :, :, 0], expected)


def test_fer2013_with_ferplus_relabels_and_drops_not_a_face(tmp_path: Path) -> None:
    kinds = write_ferplus_pair(tmp_path / "fer.csv", tmp_path / "plus.csv",
                               {"Training": 4, "PublicTest": 2, "PrivateTest": 2}, not_a_face=4,
                               contempt_kind=6)
    merged = load_fer2013(tmp_path / "fer.csv", tmp_path / "plus.csv")
    assert merged.labels == FER2013_LABELS
    assert {k: len(v) for k, v in merged.splits.items()} == {"train": 28, "val": 14, "test": 14}
    assert any("4 of" in note and "dropped" in note for note in merged.notes)
    # texture 6 was voted contempt: merged into neutral (index 6 as well)
    train_kinds = kinds[kinds >= 0][:28]
    np.testing.assert_array_equal(merged.splits["train"].label_index, train_kinds)
    kept_apart = load_fer2013(tmp_path / "fer.csv", tmp_path / "plus.csv", merge_contempt=False)
    assert kept_apart.labels[-1] == "contempt"
    counts = dict(zip(kept_apart.labels, kept_apart.splits["train"].class_counts(8).tolist(), strict=True))
    assert counts["contempt"] == 4 and counts["neutral"] == 0


def test_load_only_the_requested_split(tmp_path: Path) -> None:
    write_fer2013_csv(tmp_path / "fer.csv", {"Training": 2, "PrivateTest": 1})
    data = load_fer2013(tmp_path / "fer.csv", splits=("test",))
    assert set(data.splits) == {"test"} and len(data.splits["test"]) == 7
    with pytest.raises(DataError, match="split 'val' has no images"):
        data.split("val")


def _write_rows(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


GOOD_PIXELS = " ".join(["128"] * 2304)


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        (["emotion", "Usage"], [3, "Training"], "missing column 'pixels'"),
        (["pixels", "Usage"], [GOOD_PIXELS, "Training"], "missing column 'emotion'"),
        (["emotion", "pixels"], [3, GOOD_PIXELS], "missing column 'Usage'"),
        (["emotion", "pixels", "Usage"], [3, GOOD_PIXELS.replace("128", "x", 1), "Training"],
         "line 2: malformed pixels"),
        (["emotion", "pixels", "Usage"], [3, "1 2 3", "Training"], r"line 2: 3 pixels, expected 2304 \(48x48\)"),
        (["emotion", "pixels", "Usage"], [3, GOOD_PIXELS + " 7", "Training"], "2305 pixels"),
        (["emotion", "pixels", "Usage"], [3, GOOD_PIXELS.replace("128", "300", 1), "Training"],
         "pixel values must be 0-255"),
        (["emotion", "pixels", "Usage"], [3, GOOD_PIXELS.replace("128", "-1", 1), "Training"],
         "pixel values must be 0-255"),
        (["emotion", "pixels", "Usage"], [9, GOOD_PIXELS, "Training"], "emotion '9' is not an integer 0-6"),
        (["emotion", "pixels", "Usage"], ["happy", GOOD_PIXELS, "Training"], "emotion 'happy'"),
        (["emotion", "pixels", "Usage"], [3, GOOD_PIXELS, "Train"], "Usage 'Train' is not one of"),
        (["emotion", "pixels", "Usage"], [3, GOOD_PIXELS], "line 2: 2 fields, expected 3"),
    ],
)
def test_fer2013_errors_name_the_problem(tmp_path: Path, header: list[str], row: list[object],
                                         message: str) -> None:
    path = _write_rows(tmp_path / "fer.csv", header, [row])
    with pytest.raises(DataError, match=message) as info:
        load_fer2013(path)
    assert "\n" not in str(info.value) and "fer.csv" in str(info.value)


def test_fer2013_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="could not be read: No such file"):
        load_fer2013(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="file is empty"):
        load_fer2013(tmp_path / "empty.csv")
    _write_rows(tmp_path / "header.csv", ["emotion", "pixels", "Usage"], [])
    with pytest.raises(DataError, match="no data rows"):
        load_fer2013(tmp_path / "header.csv")


def _ferplus(path: Path, rows: list[list[object]], header: tuple[str, ...] = FERPLUS_COLUMNS) -> Path:
    return _write_rows(path, list(header), rows)


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([["Training", "a.png", *votes(happiness=10)]] * 2, FERPLUS_COLUMNS, "2 rows but fer2013 CSV .* has 1;"),
        ([], FERPLUS_COLUMNS, "0 rows but fer2013 CSV .* has more"),
        ([["PublicTest", "a.png", *votes(happiness=10)]], FERPLUS_COLUMNS,
         "row 1 is in split 'val' but fer2013 CSV row 1 is in 'train'"),
        ([["Training", "a.png", *votes(happiness=10)[:-1]]], FERPLUS_COLUMNS[:-1], "missing column 'NF'"),
        ([["Training", "a.png", "lots", *votes()[1:]]], FERPLUS_COLUMNS, "vote count neutral='lots'"),
        ([["Training", "a.png", -2, *votes()[1:]]], FERPLUS_COLUMNS, "vote count neutral='-2'"),
    ],
)
def test_ferplus_errors_name_the_problem(tmp_path: Path, rows: list[list[object]], header: tuple[str, ...],
                                         message: str) -> None:
    fer = _write_rows(tmp_path / "fer.csv", ["emotion", "pixels", "Usage"], [[3, GOOD_PIXELS, "Training"]])
    plus = _ferplus(tmp_path / "plus.csv", rows, header)
    with pytest.raises(DataError, match=message):
        load_fer2013(fer, plus)


# --------------------------------------------------------------------------- image folders


def test_image_folder_any_size_gray_or_colour(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "faces", ["calm", "happy", "upset"], 40, seed=1)
    data = load_image_folder(tmp_path / "faces", size_wh=(32, 32), color="rgb")
    assert data.labels == ("calm", "happy", "upset") and data.color == "rgb"
    total = sum(len(s) for s in data.splits.values())
    assert total == 120
    assert all(len(data.splits[name]) > 0 for name in ("train", "val", "test"))
    assert data.splits["train"].images.shape[1:] == (32, 32, 3)
    gray = load_image_folder(tmp_path / "faces", size_wh=(48, 40), color="gray")
    assert gray.splits["train"].images.shape[1:] == (40, 48, 1)


def test_image_folder_hash_split_is_stable_when_files_are_added(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "faces", ["a", "b"], 30)
    before = load_image_folder(tmp_path / "faces", size_wh=(24, 24), splits=("test",)).splits["test"].images
    extra = make_images([0, 0, 0], seed=9, size=40)
    for i, image in enumerate(extra):
        cv2.imwrite(str(tmp_path / "faces" / "a" / f"new{i}.png"), image)
    after = load_image_folder(tmp_path / "faces", size_wh=(24, 24), splits=("test",)).splits["test"].images
    # every file that was in test stays in test (new files may join it)
    assert len(after) >= len(before)
    assert all(any(np.array_equal(b, a) for a in after) for b in before)


def test_image_folder_with_split_folders(tmp_path: Path) -> None:
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        write_image_folder(tmp_path / "faces" / split, ["x", "y"], n, seed=len(split))
    data = load_image_folder(tmp_path / "faces", size_wh=(20, 20))
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 12, "val": 4, "test": 6}
    assert "split folders" in data.notes[0]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "missing", size_wh=(48, 48))
    write_image_folder(tmp_path / "one", ["only"], 3)
    with pytest.raises(DataError, match="needs at least 2 class folders"):
        load_image_folder(tmp_path / "one", size_wh=(48, 48))
    write_image_folder(tmp_path / "empty", ["a", "b"], 3)
    (tmp_path / "empty" / "c").mkdir()
    (tmp_path / "empty" / "c" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="class 'c' has no images"):
        load_image_folder(tmp_path / "empty", size_wh=(48, 48))
    write_image_folder(tmp_path / "bad", ["a", "b"], 3)
    (tmp_path / "bad" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken.png' could not be decoded"):
        load_image_folder(tmp_path / "bad", size_wh=(48, 48))
    write_image_folder(tmp_path / "mismatch" / "train", ["a", "b"], 3)
    write_image_folder(tmp_path / "mismatch" / "test", ["a", "c"], 3)
    with pytest.raises(DataError, match=r"classes \['c'\] are not in"):
        load_image_folder(tmp_path / "mismatch", size_wh=(48, 48))


def test_load_dataset_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="give one of: a FER2013 CSV"):
        load_dataset()
    with pytest.raises(DataError, match="give one of: a FER2013 CSV"):
        load_dataset(fer2013=tmp_path / "a.csv", images=tmp_path)
    with pytest.raises(DataError, match="give one of: a FER2013 CSV"):
        load_dataset(ferplus_dir=tmp_path, images=tmp_path)
    with pytest.raises(DataError, match="FERPlus CSV needs the FER2013 CSV"):
        load_dataset(images=tmp_path, ferplus=tmp_path / "b.csv")


@pytest.mark.parametrize(("name", "key"), [("Training", "train"), ("PublicTest", "val"), ("validation", "val"),
                                           ("PrivateTest", "test"), ("TEST", "test")])
def test_split_names(name: str, key: str) -> None:
    assert normalize_split_name(name) == key


def test_unknown_split_name() -> None:
    with pytest.raises(DataError, match="unknown split 'dev'"):
        normalize_split_name("dev")


# --------------------------------------------------------------------------- preprocessing


def test_prepare_images_follows_the_contract() -> None:
    images = make_images([0, 3], seed=0, size=48)
    contract = ModelContract(labels=("a", "b"), input_size_wh=(64, 32), color="rgb", layout="NCHW",
                             normalize_scale=2 / 255, normalize_offset=-1.0)
    x = prepare_images(images, contract)
    assert x.dtype == np.float32 and x.shape == (2, 3, 32, 64)
    assert x.min() >= -1.0 and x.max() <= 1.0
    # a gray image made colour has three equal channels
    np.testing.assert_array_equal(x[:, 0], x[:, 2])


def test_convert_keeps_matching_images_untouched_and_pads_not_stretches() -> None:
    images = make_images([1], seed=0, size=48)[..., None]
    assert convert_images(images, "gray", (48, 48), "gray") is images
    wide = np.zeros((1, 20, 40), np.uint8)
    wide[:, :, 20:] = 255
    out = convert_images(wide, "gray", (40, 40), "gray")[0, :, :, 0]
    # the 40x20 image sits in a 40x40 square, its edge rows repeated above and below: not stretched
    np.testing.assert_array_equal(out[:, 5], 0)
    np.testing.assert_array_equal(out[:, 35], 255)


# --------------------------------------------------------------------------- config and CLI wiring


def test_training_config_section(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  arch: recipe-small\n  color: rgb\n  bn_momentum: 0.9\n  test_split: 0.2\n")
    cfg = load_config(path).training
    assert (cfg.arch, cfg.color, cfg.bn_momentum, cfg.test_split) == ("recipe-small", "rgb", 0.9, 0.2)
    for text, message in [
        ("training:\n  test_split: 0.6\n  validation_split: 0.5\n", "validation_split \\+ test_split"),
        ("training:\n  bn_recalibration_samples: -1\n", "bn_recalibration_samples: must be >= 0"),
        ("training:\n  color: grey\n", "'training.color' must be one of"),
        ("training:\n  crop_margin: 2\n", "crop_margin: must be in"),
        ("training:\n  epochz: 3\n", "unknown config key 'training.epochz'"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_registering_the_commands_does_not_import_tensorflow() -> None:
    code = (
        "import argparse, sys\n"
        "from training.cli import register\n"
        "p = argparse.ArgumentParser(); register(p.add_subparsers(dest='c'))\n"
        "a = p.parse_args(['train', '--fer2013', 'x.csv', '--out', 'r'])\n"
        "assert a.func.__name__ == '_train', a\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
