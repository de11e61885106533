"""Many datasets, one reader (training/datasets.py): labels.csv folders, face finding, the crop cache, mixing.

The folders are made here: small crops for ``faces: whole``, frames of the bundled carphone clip
(a real face) and a blank picture for ``faces: detect`` with the stream's own detector.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream.config import MODELS_DIR
from stream.contract import FER2013_LABELS
from stream.errors import DataError
from tests.conftest import read_frames
from tests.training_data import make_images
from training.datasets import (
    CropSettings,
    DatasetSpec,
    cache_dir,
    dataset_kind,
    load_data_file,
    load_datasets,
    load_labelled_set,
    parse_dataset_arg,
    read_labels_csv,
    weighted_indices,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIP = REPO_ROOT / "stream" / "assets" / "carphone_640x480.mp4"
SHARED = REPO_ROOT.parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMOSTREAM_CACHE", str(tmp_path / "cache"))


def write_set(root: Path, images: list[np.ndarray], labels: list[str], splits: list[str],
              extra: dict[str, list[str]] | None = None) -> Path:
    (root / "images").mkdir(parents=True)
    extra = extra or {}
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "split", *extra])
        for i, (image, label, split) in enumerate(zip(images, labels, splits, strict=True)):
            name = f"img{i:03d}.png"
            cv2.imwrite(str(root / "images" / name), image)
            writer.writerow([name, label, split, *(values[i] for values in extra.values())])
    return root


def crops_set(root: Path, n: int = 12) -> Path:
    images = list(make_images([i % 8 for i in range(n)], seed=1, size=64)[..., 0])
    labels = [("happy", "sad", "neutral")[i % 3] for i in range(n)]
    splits = ["train" if i < n - 4 else "valid" for i in range(n)]
    return write_set(root, images, labels, splits, {"person": [f"p{i % 4}" for i in range(n)]})


def clip_frames(n: int) -> list[np.ndarray]:
    frames = read_frames(CLIP, n)
    assert len(frames) == n
    return frames


# --------------------------------------------------------------------------- labels.csv


def test_labels_csv_keeps_extra_columns_and_normalises_splits(tmp_path: Path) -> None:
    root = crops_set(tmp_path / "set")
    rows = read_labels_csv(root / "labels.csv")
    assert len(rows) == 12
    assert rows[0]["person"] == "p0"
    assert {r["split"] for r in rows} == {"train", "val"}
    assert dataset_kind(root) == "labels_csv"


def test_labels_csv_errors_are_data_errors(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "labels.csv").write_text("file,label\nx.png,happy\n")
    with pytest.raises(DataError, match="missing columns"):
        read_labels_csv(tmp_path / "a" / "labels.csv")
    (tmp_path / "a" / "labels.csv").write_text("file,label,split\nx.png,happy,later\n")
    with pytest.raises(DataError, match="line 2"):
        read_labels_csv(tmp_path / "a" / "labels.csv")
    with pytest.raises(DataError, match="neither a FERPlus folder"):
        dataset_kind(tmp_path / "a")


def test_whole_image_set(tmp_path: Path) -> None:
    part = load_labelled_set(DatasetSpec(crops_set(tmp_path / "set")), size_wh=(48, 48), splits=("train", "val"))
    assert part.faces_mode == "whole"  # 64 px images: auto treats them as crops
    data = part.dataset
    assert data.labels == ("happy", "sad", "neutral")  # FER2013 order
    assert data.splits["train"].images.shape == (8, 48, 48, 1)
    assert len(data.splits["val"]) == 4
    assert [r["person"] for r in part.rows["val"]] == ["p0", "p1", "p2", "p3"]
    assert data.split("val").label_index.tolist() == [data.labels.index(r["label"]) for r in part.rows["val"]]


# --------------------------------------------------------------------------- faces found by the detector


def test_detected_faces_largest_face_not_found_and_cache(tmp_path: Path) -> None:
    frames = clip_frames(3)
    blank = np.full((480, 640, 3), 128, np.uint8)
    root = write_set(tmp_path / "photos", [*frames, blank], ["happy", "sad", "neutral", "happy"],
                     ["valid"] * 4)
    spec = DatasetSpec(root)
    part = load_labelled_set(spec, size_wh=(48, 48), splits=("val",))
    assert part.faces_mode == "detect"  # 480 px: auto finds faces
    assert len(part.dataset.splits["val"]) == 3
    assert [r["file"] for r in part.not_found["val"]] == ["img003.png"]
    cached = list(cache_dir().glob("photos-*.npz"))
    assert len(cached) == 1
    assert not list(cache_dir().glob("*.partial.*"))

    from stream.config import Config
    from stream.infer import FaceDetector

    cfg = Config().detector
    real = FaceDetector.from_path(cfg.model, ("cpu",), 0, cfg.score_threshold, cfg.nms_iou, cfg.min_face_px)

    class NoDetector:
        score_threshold, nms_iou, min_face_px, input_size = (real.score_threshold, real.nms_iou, real.min_face_px,
                                                             real.input_size)

        def detect(self, images: list[np.ndarray]) -> list[list[object]]:
            raise AssertionError("the cache should have answered")

    again = load_labelled_set(spec, size_wh=(48, 48), splits=("val",), detector=NoDetector(),
                              detector_path=MODELS_DIR / "blazeface_short_range.onnx")
    np.testing.assert_array_equal(again.dataset.splits["val"].images, part.dataset.splits["val"].images)
    # Another crop is another cache entry.
    load_labelled_set(spec, size_wh=(48, 48), splits=("val",), crop=CropSettings(0.2, 0.0, "none"))
    assert len(list(cache_dir().glob("photos-*.npz"))) == 2


def test_the_crop_is_the_stream_crop_of_the_largest_face(tmp_path: Path) -> None:
    from stream.infer.classify import CropSpec, crop_faces, eye_roll_deg
    from stream.infer.detect import Detection

    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8)
    keypoints = np.array([[150, 120], [190, 130], [170, 150], [170, 170], [130, 130], [210, 130]], np.float32)
    small = Detection(np.array([10, 10, 40, 40], np.float32), 0.9, keypoints)
    large = Detection(np.array([120, 90, 220, 200], np.float32), 0.6, keypoints)

    class TwoFaces:
        def detect(self, images: list[np.ndarray]) -> list[list[Detection]]:
            return [[small, large] for _ in images]

    root = write_set(tmp_path / "two", [image], ["happy"], ["train"])
    crop = CropSettings(0.1, -0.05, "eyes")
    part = load_labelled_set(DatasetSpec(root, faces="detect"), size_wh=(48, 48), crop=crop,
                             detector=TwoFaces(), detector_path=MODELS_DIR / "blazeface_short_range.onnx",
                             splits=("train",))
    stored = cv2.imread(str(root / "images" / "img000.png"))
    expected = crop_faces(stored, [large.box_xyxy], CropSpec((48, 48), "gray", 0.1, -0.05),
                          [eye_roll_deg(keypoints)])[0]
    np.testing.assert_array_equal(part.dataset.splits["train"].images[0, ..., 0], expected)


# --------------------------------------------------------------------------- mixing


def test_weighted_indices() -> None:
    a, b = weighted_indices([100, 10], [1.0, 1.0], seed=0)
    assert len(a) == 100 and len(b) == 10
    a, b = weighted_indices([100, 10], [1.0, 5.0], seed=0)
    assert len(a) + len(b) == 110
    # an image of b is drawn five times as often as one of a
    assert len(b) / 10 == pytest.approx(5 * len(a) / 100, rel=0.05)
    again = weighted_indices([100, 10], [1.0, 5.0], seed=0)
    assert all((x == y).all() for x, y in zip((a, b), again, strict=True))


def test_mixture_one_label_order_and_weights(tmp_path: Path) -> None:
    first = crops_set(tmp_path / "first", 12)
    images = list(make_images(list(range(6)), seed=2, size=64)[..., 0])
    second = write_set(tmp_path / "second", images, ["angry", "fear", "angry", "fear", "angry", "fear"],
                       ["train"] * 4 + ["val"] * 2)
    mix = load_datasets([DatasetSpec(first), DatasetSpec(second, weight=3.0)], size_wh=(48, 48),
                        splits=("train", "val"))
    data = mix.dataset
    assert data.labels == ("angry", "fear", "happy", "sad", "neutral")
    assert set(mix.parts) == {"first", "second"}
    train = data.splits["train"]
    assert len(train) == 8 + 4
    counts = dict(zip(data.labels, train.class_counts(len(data.labels)), strict=True))
    # second's 4 images weigh 3 each: 12 * 3 * 4 / (8 + 12) = 7.2 draws of them
    assert counts["angry"] + counts["fear"] in (7, 8)
    assert len(data.splits["val"]) == 4 + 2
    assert set(FER2013_LABELS) >= set(data.labels)


def test_dataset_arguments_and_data_file(tmp_path: Path) -> None:
    spec = parse_dataset_arg("some/where,weight=2.5,faces=detect,name=tw")
    assert spec == DatasetSpec(Path("some/where"), 2.5, "detect", "tw")
    with pytest.raises(DataError):
        parse_dataset_arg("x,colour=red")
    with pytest.raises(DataError):
        parse_dataset_arg("x,weight=0")
    path = tmp_path / "data.yaml"
    path.write_text("datasets:\n  - path: a\n  - {path: /abs/b, weight: 4, faces: whole}\n"
                    "crop: {margin: 0.2, offset_y: 0.0, align: none}\n")
    specs, crop = load_data_file(path)
    assert specs[0].path == tmp_path / "a" and specs[1].weight == 4 and specs[1].faces == "whole"
    assert crop == CropSettings(0.2, 0.0, "none")
    path.write_text("datasets: []\n")
    with pytest.raises(DataError):
        load_data_file(path)


def test_evaluate_command_scores_each_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        from stream.commands import main
    except ImportError:  # before the command code moved
        from stream.cli import main  # type: ignore[no-redef]

    first = crops_set(tmp_path / "first", 12)
    frames = clip_frames(2)
    second = write_set(tmp_path / "second", frames, ["neutral", "happy"], ["valid", "valid"])
    model = MODELS_DIR / "emotion_minixception.onnx"
    assert main(["evaluate", str(model), "--dataset", str(first), "--dataset", f"{second},name=clip",
                 "--split", "valid"]) == 0
    out = capsys.readouterr().out
    assert "== first (whole)" in out and "== clip (detect)" in out
    assert "val split, 4 images" in out and "val split, 2 images" in out


@pytest.mark.skipif(not (SHARED / "taiwanese").is_dir(),
                    reason="../shared/datasets/taiwanese is absent (research data, never in the repository)")
def test_real_photos_have_faces_found(tmp_path: Path) -> None:
    rows = read_labels_csv(SHARED / "taiwanese" / "labels.csv")
    part = load_labelled_set(DatasetSpec(SHARED / "taiwanese"), size_wh=(48, 48), splits=("val",), use_cache=False)
    assert part.faces_mode == "detect"
    n_val = sum(r["split"] == "val" for r in rows)
    assert len(part.dataset.splits["val"]) >= 0.95 * n_val


def test_train_on_two_mixed_sets_and_resume_reads_them_again(tmp_path: Path) -> None:
    pytest.importorskip("tf2onnx")
    import json

    try:
        from stream.commands import main
    except ImportError:  # before the command code moved
        from stream.cli import main  # type: ignore[no-redef]

    kinds = [i % 2 for i in range(24)]
    images = list(make_images(kinds, seed=5, size=48)[..., 0])
    labels = [("happy", "sad")[k] for k in kinds]
    splits = ["train"] * 16 + ["valid"] * 4 + ["test"] * 4
    first = write_set(tmp_path / "first", images, labels, splits)
    second = write_set(tmp_path / "second", images[:8], labels[:8], ["train"] * 8)
    run_dir = tmp_path / "run"
    assert main(["train", "--dataset", str(first), "--dataset", f"{second},weight=2", "--out", str(run_dir),
                 "--arch", "recipe-small", "--epochs", "1", "--batch-size", "8", "--seed", "1"]) == 0
    saved = json.loads((run_dir / "train_args.json").read_text())
    assert saved["dataset"] == [str(first.resolve()), f"{second.resolve()},weight=2"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["split"] == "test" and report["n_samples"] == 4
    assert main(["train", "--resume", str(run_dir)]) == 0  # the finished run reads the same sets again
