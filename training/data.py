"""Datasets for training and evaluation: FER2013, FERPlus, folders of images.

Everything here is NumPy and OpenCV; TensorFlow is not imported.

FER2013 (``fer2013.csv``: ``emotion, pixels, Usage``) gives 48x48 gray faces
and its own labels (:data:`stream.contract.FER2013_LABELS`). FERPlus
(``fer2013new.csv``: ``Usage, Image name, neutral, happiness, surprise,
sadness, anger, disgust, fear, contempt, unknown, NF``) relabels the same
images row by row with ten crowd votes each. The FERPlus rules
(:func:`ferplus_targets`):

* ``contempt`` votes are added to ``neutral`` unless ``merge_contempt`` is off
  (then ``contempt`` is an eighth class).
* A row is dropped when ``unknown`` or ``NF`` (not a face) has more votes than
  every emotion, or when no emotion has a vote. A tie goes to the emotion: the
  first maximum in column order, as ``np.argmax`` in the FERPlus reference
  code picks it.
* ``majority``: the emotion with the most votes (ties: the first in FERPlus
  column order). ``soft``: the emotion votes divided by their sum.

These are the seed project's rules. The FERPlus reference code's stricter
"majority" mode (single votes discarded, more than half of the votes needed,
else the row is dropped) is not applied.

FERPlus label names are mapped to FER2013's (``happiness`` -> ``happy`` ...)
and ordered as FER2013, ``contempt`` last, so any model of this project has
the same label vocabulary.

The official splits come from ``Usage``: ``Training`` -> ``train``,
``PublicTest`` -> ``val`` (chooses the checkpoint), ``PrivateTest`` ->
``test`` (reported, never used for a choice).

A folder of images has one subfolder per class (any size, gray or colour,
PNG/JPEG/BMP/WebP/TIFF/PGM). With ``train/``, ``val/`` and ``test/``
subfolders (each holding the class folders) those are the splits; otherwise
each file goes to a split by a hash of its path relative to its class
folder: stable when files are added, independent of the seed.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from stream.contract import FER2013_LABELS, ModelContract
from stream.errors import DataError

__all__ = [
    "FERPLUS_EMOTIONS",
    "IMAGE_SUFFIXES",
    "SPLITS",
    "Dataset",
    "Split",
    "convert_images",
    "ferplus_labels",
    "ferplus_majority_mask",
    "ferplus_targets",
    "load_dataset",
    "load_fer2013",
    "load_ferplus_dir",
    "load_image_array",
    "load_image_folder",
    "normalize_split_name",
    "prepare_images",
]

log = logging.getLogger(__name__)

Color = Literal["gray", "rgb", "bgr"]
LabelMode = Literal["majority", "soft"]

#: Split names, in the order they are used.
SPLITS: tuple[str, ...] = ("train", "val", "test")
_USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "publictest": "val",
    "test": "test", "privatetest": "test",
}

FER2013_SIDE = 48
#: FERPlus emotion columns, in file order.
FERPLUS_EMOTIONS: tuple[str, ...] = (
    "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
)
_FERPLUS_NON_EMOTIONS = ("unknown", "NF")
_FERPLUS_TO_FER2013 = {
    "neutral": "neutral", "happiness": "happy", "surprise": "surprise", "sadness": "sad",
    "anger": "angry", "disgust": "disgust", "fear": "fear", "contempt": "contempt",
}

#: File suffixes read from image folders (case-insensitive).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})


@dataclass(frozen=True)
class Split:
    """The images and targets of one split.

    Attributes:
        images: uint8 ``(N, H, W, C)``, C = 1 (gray) or 3 (in the dataset's colour order).
        targets: float32 ``(N, n_labels)``: one-hot, or a vote distribution (soft labels).
        votes: FERPlus only: the raw ``(N, 10)`` vote counts of each kept image (FERPlus
            column order), for :func:`ferplus_majority_mask` and the paper's scoring rule.
    """

    images: np.ndarray
    targets: np.ndarray
    votes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def label_index(self) -> np.ndarray:
        """The hard label of each image (argmax of its target)."""
        return np.argmax(self.targets, axis=1) if len(self.targets) else np.zeros(0, dtype=np.int64)

    def class_counts(self, n_labels: int) -> np.ndarray:
        """Number of images per label (hard labels)."""
        return np.bincount(self.label_index, minlength=n_labels)


@dataclass(frozen=True)
class Dataset:
    """A labelled dataset with its splits.

    Attributes:
        labels: Class names, in target-column order.
        splits: Split name (``train``, ``val``, ``test``) -> :class:`Split`; absent splits are empty.
        color: Colour of ``images``: ``gray`` (1 channel), ``rgb`` or ``bgr``.
        source: Human-readable description of where the data came from.
    """

    labels: tuple[str, ...]
    splits: dict[str, Split]
    color: Color
    source: str
    notes: tuple[str, ...] = field(default=())

    @property
    def size_wh(self) -> tuple[int, int]:
        """Width and height of the images."""
        for split in self.splits.values():
            if len(split):
                return int(split.images.shape[2]), int(split.images.shape[1])
        return (0, 0)

    def split(self, name: str) -> Split:
        """The split called ``name`` (aliases such as ``PrivateTest`` accepted).

        Raises:
            DataError: The split is unknown or empty.
        """
        key = normalize_split_name(name)
        found = self.splits.get(key)
        if found is None or len(found) == 0:
            raise DataError(f"{self.source}: split '{key}' has no images")
        return found

    def converted(self, size_wh: tuple[int, int], color: Color) -> Dataset:
        """The same dataset resized to ``size_wh`` and converted to ``color``."""
        if size_wh == self.size_wh and color == self.color:
            return self
        splits = {
            name: Split(convert_images(s.images, self.color, size_wh, color), s.targets, s.votes)
            for name, s in self.splits.items()
        }
        return Dataset(self.labels, splits, color, self.source, self.notes)

    def summary(self) -> str:
        """One line: source, labels and split sizes."""
        sizes = ", ".join(f"{name} {len(self.splits[name])}" for name in SPLITS if name in self.splits)
        return f"{self.source}: {len(self.labels)} labels ({', '.join(self.labels)}); {sizes}"


def normalize_split_name(name: str) -> str:
    """Map a split name or alias (``val``, ``PublicTest``, ``validation``...) to train/val/test.

    Raises:
        DataError: The name is not a known split.
    """
    key = _SPLIT_ALIASES.get(name.strip().lower())
    if key is None:
        raise DataError(f"unknown split {name!r} (expected train, val or test)")
    return key


# --------------------------------------------------------------------------- FER2013 / FERPlus


def ferplus_labels(merge_contempt: bool = True) -> tuple[str, ...]:
    """Label order of a FERPlus-trained model: FER2013's, plus ``contempt`` when not merged."""
    return FER2013_LABELS if merge_contempt else (*FER2013_LABELS, "contempt")


def ferplus_targets(
    votes: np.ndarray, *, label_mode: LabelMode = "majority", merge_contempt: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Turn FERPlus vote rows into training targets.

    Args:
        votes: ``(N, 10)`` vote counts in FERPlus column order
            (8 emotions of :data:`FERPLUS_EMOTIONS`, then ``unknown``, ``NF``).
        label_mode: ``majority`` (one-hot of the most-voted emotion) or ``soft``
            (emotion votes normalised to sum 1).
        merge_contempt: Count ``contempt`` votes as ``neutral``.

    Returns:
        ``(keep, targets)``: a boolean mask of the rows kept, and float32 targets
        ``(keep.sum(), n_labels)`` in the order of :func:`ferplus_labels`.
    """
    votes = np.asarray(votes, dtype=np.float64)
    if votes.ndim != 2 or votes.shape[1] != len(FERPLUS_EMOTIONS) + 2:
        raise DataError(f"FERPlus votes must have {len(FERPLUS_EMOTIONS) + 2} columns, got shape {votes.shape}")
    emotions = votes[:, : len(FERPLUS_EMOTIONS)].copy()
    others = votes[:, len(FERPLUS_EMOTIONS):]
    names = list(FERPLUS_EMOTIONS)
    if merge_contempt:
        emotions[:, names.index("neutral")] += emotions[:, names.index("contempt")]
        emotions = np.delete(emotions, names.index("contempt"), axis=1)
        names.remove("contempt")
    top_emotion = emotions.max(axis=1)
    keep = (top_emotion > 0) & (top_emotion >= others.max(axis=1))
    emotions = emotions[keep]
    # Reorder the FERPlus columns into FER2013 vocabulary and order.
    target_labels = ferplus_labels(merge_contempt)
    fer_names = [_FERPLUS_TO_FER2013[n] for n in names]
    order = [fer_names.index(label) for label in target_labels]
    if label_mode == "soft":
        targets = emotions / emotions.sum(axis=1, keepdims=True)
    elif label_mode == "majority":
        # argmax over FERPlus column order breaks ties the way the FERPlus code does.
        targets = np.zeros_like(emotions)
        targets[np.arange(len(emotions)), np.argmax(emotions, axis=1)] = 1.0
    else:
        raise DataError(f"label_mode must be 'majority' or 'soft', got {label_mode!r}")
    return keep, targets[:, order].astype(np.float32)


def ferplus_majority_mask(votes: np.ndarray, *, merge_contempt: bool = True) -> np.ndarray:
    """Rows the FERPlus paper's *majority* rule keeps (the rule its 84.9 % was scored with).

    Single votes are discarded (set to 0, they are treated as noise), then a row
    is kept when its most-voted emotion holds more than half of the remaining
    votes and that emotion is not ``unknown`` or ``NF``. ``contempt`` is added to
    ``neutral`` first when ``merge_contempt``. The kept rows' label is that
    emotion: the same as the plurality label :func:`ferplus_targets` gives.

    Args:
        votes: ``(N, 10)`` vote counts in FERPlus column order.

    Returns:
        A boolean mask of length N.
    """
    votes = np.asarray(votes, dtype=np.float64).copy()
    if votes.ndim != 2 or votes.shape[1] != len(FERPLUS_EMOTIONS) + 2:
        raise DataError(f"FERPlus votes must have {len(FERPLUS_EMOTIONS) + 2} columns, got shape {votes.shape}")
    if merge_contempt:
        names = list(FERPLUS_EMOTIONS)
        votes[:, names.index("neutral")] += votes[:, names.index("contempt")]
        votes[:, names.index("contempt")] = 0
    votes[votes == 1] = 0
    total = votes.sum(axis=1)
    top = votes.argmax(axis=1)
    top_votes = votes[np.arange(len(votes)), top]
    return (total > 0) & (top_votes > total / 2) & (top < len(FERPLUS_EMOTIONS))


#: The FERPlus folders Microsoft's ``generate_training_data.py`` writes, and their split.
FERPLUS_FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}


def load_ferplus_dir(
    root: Path,
    *,
    label_mode: LabelMode = "majority",
    merge_contempt: bool = True,
    splits: Iterable[str] = SPLITS,
) -> Dataset:
    """Load FERPlus as its scripts lay it out: ``FER2013Train/ FER2013Valid/ FER2013Test/``.

    Each folder holds 48x48 gray PNGs and a header-less ``label.csv``: image
    name, face box, then the 10 vote counts (FERPlus column order). The rules
    of :func:`ferplus_targets` apply; each split keeps its raw votes
    (:attr:`Split.votes`) for the paper's majority scoring.

    Raises:
        DataError: A folder, ``label.csv`` or image is missing or malformed.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"FERPlus folder '{root}' does not exist")
    wanted = [name for name in SPLITS if name in {normalize_split_name(s) for s in splits}]
    result: dict[str, Split] = {}
    dropped = total = 0
    for name in wanted:
        folder = root / FERPLUS_FOLDERS[name]
        names, votes = _read_ferplus_labels(folder / "label.csv")
        keep, targets = ferplus_targets(votes, label_mode=label_mode, merge_contempt=merge_contempt)
        kept = [n for n, k in zip(names, keep, strict=True) if k]
        images = np.zeros((len(kept), FER2013_SIDE, FER2013_SIDE, 1), np.uint8)
        for i, image_name in enumerate(kept):
            images[i, ..., 0] = _read_gray_face(folder / image_name)
        result[name] = Split(images, targets, votes[keep].astype(np.float32))
        dropped += int((~keep).sum())
        total += len(keep)
    notes = (
        f"FERPlus {label_mode} labels",
        "contempt merged into neutral" if merge_contempt else "contempt kept as a class",
        f"{dropped} of {total} images dropped (top vote unknown or NF, or no votes)",
    )
    return Dataset(ferplus_labels(merge_contempt), result, "gray", f"FERPlus '{root}'", notes)


def _read_ferplus_labels(path: Path) -> tuple[list[str], np.ndarray]:
    n_votes = len(FERPLUS_EMOTIONS) + len(_FERPLUS_NON_EMOTIONS)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.reader(fh) if row]
    except OSError as err:
        raise DataError(f"FERPlus labels '{path}' could not be read: {err.strerror or err}") from err
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"FERPlus labels '{path}': not a valid CSV file: {err}") from err
    if not rows:
        raise DataError(f"FERPlus labels '{path}': no rows")
    names: list[str] = []
    votes = np.zeros((len(rows), n_votes), np.float64)
    for i, row in enumerate(rows):
        if len(row) != 2 + n_votes:
            raise DataError(f"FERPlus labels '{path}': line {i + 1}: {len(row)} fields, expected "
                            f"{2 + n_votes} (name, box, {n_votes} votes)")
        try:
            votes[i] = [float(v) for v in row[2:]]
        except ValueError:
            raise DataError(f"FERPlus labels '{path}': line {i + 1}: vote counts must be numbers") from None
        if (votes[i] < 0).any():
            raise DataError(f"FERPlus labels '{path}': line {i + 1}: negative vote count")
        names.append(row[0].strip())
    return names, votes


def _read_gray_face(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) if path.is_file() else None
    if image is None:
        raise DataError(f"FERPlus image '{path}' is missing or not an image")
    if image.shape != (FER2013_SIDE, FER2013_SIDE):
        image = cv2.resize(image, (FER2013_SIDE, FER2013_SIDE), interpolation=cv2.INTER_AREA)
    return image


def _parse_pixels(text: str, path: Path, line: int) -> np.ndarray:
    expected = FER2013_SIDE * FER2013_SIDE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            values = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning) as err:
        raise DataError(f"fer2013 CSV '{path}': line {line}: malformed pixels (expected "
                        f"{expected} integers 0-255 separated by spaces)") from err
    if values.size != expected:
        raise DataError(f"fer2013 CSV '{path}': line {line}: {values.size} pixels, expected "
                        f"{expected} ({FER2013_SIDE}x{FER2013_SIDE})")
    if values.min() < 0 or values.max() > 255:
        raise DataError(f"fer2013 CSV '{path}': line {line}: pixel values must be 0-255, "
                        f"got {values.min()}..{values.max()}")
    return values.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE, 1)


def _usage_split(usage: str, what: str, path: Path, line: int) -> str:
    split = _USAGE_TO_SPLIT.get(usage.strip())
    if split is None:
        raise DataError(f"{what} CSV '{path}': line {line}: Usage {usage!r} is not one of "
                        f"{', '.join(_USAGE_TO_SPLIT)}")
    return split


def load_fer2013(
    fer2013_csv: Path,
    ferplus_csv: Path | None = None,
    *,
    label_mode: LabelMode = "majority",
    merge_contempt: bool = True,
    splits: Iterable[str] = SPLITS,
) -> Dataset:
    """Load FER2013, optionally relabelled by FERPlus (see the module docstring).

    Args:
        fer2013_csv: ``fer2013.csv`` with columns ``emotion, pixels, Usage``.
        ferplus_csv: ``fer2013new.csv``; its rows are joined to FER2013's by position.
        label_mode: FERPlus only: ``majority`` or ``soft``.
        merge_contempt: FERPlus only: count ``contempt`` as ``neutral``.
        splits: Which splits to decode (pixels of the others are not parsed).

    Returns:
        A gray 48x48 :class:`Dataset`.

    Raises:
        DataError: A file is unreadable, a column missing, a row malformed, or
            the two files do not describe the same images.
    """
    fer2013_csv = Path(fer2013_csv)
    wanted = {normalize_split_name(s) for s in splits}
    plus: tuple[np.ndarray, np.ndarray, list[str]] | None = None
    if ferplus_csv is None:
        labels = FER2013_LABELS
        source = f"FER2013 '{fer2013_csv.name}'"
        notes: tuple[str, ...] = ("FER2013 labels",)
    else:
        ferplus_csv = Path(ferplus_csv)
        votes, plus_split = _read_ferplus(ferplus_csv)
        keep, kept_targets = ferplus_targets(votes, label_mode=label_mode, merge_contempt=merge_contempt)
        targets_by_row = np.zeros((len(votes), kept_targets.shape[1]), dtype=np.float32)
        targets_by_row[keep] = kept_targets
        plus = (keep, targets_by_row, plus_split)
        labels = ferplus_labels(merge_contempt)
        dropped = int((~keep).sum())
        source = f"FER2013 '{fer2013_csv.name}' + FERPlus '{ferplus_csv.name}'"
        notes = (
            f"FERPlus {label_mode} labels",
            "contempt merged into neutral" if merge_contempt else "contempt kept as a class",
            f"{dropped} of {len(votes)} rows dropped (top vote unknown or NF, or no votes)",
        )

    images: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    targets: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    n_rows = 0
    with _open_csv(fer2013_csv, "fer2013", ("emotion", "pixels", "Usage")) as (header, reader):
        col = {name: header.index(name) for name in ("emotion", "pixels", "Usage")}
        for i, row in enumerate(reader):
            line = i + 2
            if not row:
                continue
            if len(row) < len(header):
                raise DataError(f"fer2013 CSV '{fer2013_csv}': line {line}: {len(row)} fields, "
                                f"expected {len(header)}")
            split = _usage_split(row[col["Usage"]], "fer2013", fer2013_csv, line)
            if plus is None:
                text = row[col["emotion"]].strip()
                if not text.isdigit() or int(text) >= len(labels):
                    raise DataError(f"fer2013 CSV '{fer2013_csv}': line {line}: emotion {text!r} is not "
                                    f"an integer 0-{len(labels) - 1}")
                target = np.zeros(len(labels), dtype=np.float32)
                target[int(text)] = 1.0
                keep_row = True
            else:
                keep, targets_by_row, plus_split = plus
                if n_rows >= len(keep):
                    raise DataError(f"ferplus CSV '{ferplus_csv}': {len(keep)} rows but fer2013 CSV "
                                    f"'{fer2013_csv}' has more; the files are joined row by row")
                if plus_split[n_rows] != split:
                    raise DataError(f"ferplus CSV '{ferplus_csv}': row {n_rows + 1} is in split "
                                    f"'{plus_split[n_rows]}' but fer2013 CSV row {n_rows + 1} is in "
                                    f"'{split}'; the files do not match row by row")
                keep_row = bool(keep[n_rows])
                target = targets_by_row[n_rows]
            n_rows += 1
            if keep_row and split in wanted:
                images[split].append(_parse_pixels(row[col["pixels"]], fer2013_csv, line))
                targets[split].append(target)
    if n_rows == 0:
        raise DataError(f"fer2013 CSV '{fer2013_csv}': no data rows")
    if plus is not None and n_rows != len(plus[0]):
        raise DataError(f"ferplus CSV '{ferplus_csv}': {len(plus[0])} rows but fer2013 CSV "
                        f"'{fer2013_csv}' has {n_rows}; the files are joined row by row")
    side = FER2013_SIDE
    result = {
        name: Split(
            np.stack(images[name]) if images[name] else np.zeros((0, side, side, 1), np.uint8),
            np.stack(targets[name]) if targets[name] else np.zeros((0, len(labels)), np.float32),
        )
        for name in SPLITS
        if name in wanted
    }
    return Dataset(labels, result, "gray", source, notes)


@contextlib.contextmanager
def _open_csv(path: Path, what: str, required: Sequence[str]) -> Iterator[tuple[list[str], Iterator[list[str]]]]:
    """Open a CSV, check its header for ``required`` columns, yield ``(header, rows)``."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{what} CSV '{path}': file is empty")
            header = [h.strip() for h in header]
            for column in required:
                if column not in header:
                    raise DataError(f"{what} CSV '{path}': missing column '{column}'")
            yield header, reader
    except OSError as err:
        raise DataError(f"{what} CSV '{path}' could not be read: {err.strerror or err}") from err
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{what} CSV '{path}': not a valid CSV file: {err}") from err


def _read_ferplus(path: Path) -> tuple[np.ndarray, list[str]]:
    columns = ("Usage", *FERPLUS_EMOTIONS, *_FERPLUS_NON_EMOTIONS)
    with _open_csv(path, "ferplus", columns) as (header, reader):
        rows = [row for row in reader if row]
    idx = [header.index(c) for c in columns]
    votes = np.zeros((len(rows), len(columns) - 1), dtype=np.float64)
    splits = []
    for i, row in enumerate(rows):
        if len(row) < len(header):
            raise DataError(f"ferplus CSV '{path}': line {i + 2}: {len(row)} fields, expected {len(header)}")
        splits.append(_usage_split(row[idx[0]], "ferplus", path, i + 2))
        for j, c in enumerate(idx[1:]):
            text = row[c].strip()
            try:
                value = float(text)
            except ValueError:
                value = -1.0
            if not value >= 0:
                raise DataError(f"ferplus CSV '{path}': line {i + 2}: vote count {columns[j + 1]}={text!r} "
                                "is not a number >= 0")
            votes[i, j] = value
    return votes, splits


# --------------------------------------------------------------------------- image folders


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path) -> np.ndarray:
    """Read any image file as uint8 BGR (H, W, 3); non-ASCII paths work too."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"image '{path}' could not be read: {err.strerror or err}") from err
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DataError(f"image '{path}' could not be decoded")
    if image.dtype == np.uint16:
        image = (image // 257).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DataError(f"image '{path}': unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return image


def _class_folders(root: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def _split_by_hash(relative: str, validation_split: float, test_split: float) -> str:
    digest = hashlib.sha1(relative.encode("utf-8")).hexdigest()
    share = int(digest[:8], 16) / 0x1_0000_0000
    if share < test_split:
        return "test"
    if share < test_split + validation_split:
        return "val"
    return "train"


def load_image_folder(
    root: Path,
    *,
    size_wh: tuple[int, int],
    color: Color = "gray",
    validation_split: float = 0.1,
    test_split: float = 0.1,
    splits: Iterable[str] = SPLITS,
) -> Dataset:
    """Load a folder with one subfolder of images per class (see the module docstring).

    Args:
        root: The folder. Either ``root/<class>/...`` or ``root/{train,val,test}/<class>/...``.
        size_wh: Every image is resized to this width and height.
        color: ``gray``, ``rgb`` or ``bgr``: colour of the returned images.
        validation_split: Share of the files that go to ``val`` (hash split only).
        test_split: Share of the files that go to ``test`` (hash split only).
        splits: Which splits to decode.

    Returns:
        A :class:`Dataset` with one-hot targets; labels are the sorted class folder names.

    Raises:
        DataError: The folder is missing, a class folder has no images, an image
            cannot be decoded, or the split folders hold different classes.
    """
    root = Path(root)
    wanted = {normalize_split_name(s) for s in splits}
    if not root.is_dir():
        raise DataError(f"image folder '{root}' does not exist or is not a folder")
    if validation_split + test_split >= 1.0:
        raise DataError(f"image folder '{root}': validation_split + test_split must be < 1, "
                        f"got {validation_split} + {test_split}")
    top = _class_folders(root)
    split_dirs = {normalize_split_name(name): path for name, path in top.items()
                  if name.lower() in _SPLIT_ALIASES}
    files: dict[str, list[tuple[Path, str]]] = {name: [] for name in SPLITS}
    if split_dirs:
        if "train" not in split_dirs and "train" in wanted:
            raise DataError(f"image folder '{root}': has split folders ({', '.join(sorted(top))}) but no 'train'")
        reference = next(iter(split_dirs.values())) if "train" not in split_dirs else split_dirs["train"]
        labels = tuple(_class_folders(reference))
        for name, path in split_dirs.items():
            classes = tuple(_class_folders(path))
            extra = sorted(set(classes) - set(labels))
            if extra:
                raise DataError(f"image folder '{path}': classes {extra} are not in '{reference}' "
                                f"(labels there: {', '.join(labels)})")
            for label in classes:
                images = _list_images(path / label)
                if not images and name == "train":
                    raise DataError(f"image folder '{path / label}': class '{label}' has no images")
                files[name].extend((p, label) for p in images)
    else:
        labels = tuple(top)
        for label in labels:
            images = _list_images(root / label)
            if not images:
                raise DataError(f"image folder '{root / label}': class '{label}' has no images "
                                f"({', '.join(sorted(IMAGE_SUFFIXES))})")
            for p in images:
                split = _split_by_hash(p.relative_to(root / label).as_posix(), validation_split, test_split)
                files[split].append((p, label))
    if len(labels) < 2:
        raise DataError(f"image folder '{root}': needs at least 2 class folders, found {list(labels)}")

    result: dict[str, Split] = {}
    for name in SPLITS:
        if name not in wanted:
            continue
        entries = files[name]
        pixels = np.empty((len(entries), size_wh[1], size_wh[0], 1 if color == "gray" else 3), dtype=np.uint8)
        targets = np.zeros((len(entries), len(labels)), dtype=np.float32)
        for i, (path, label) in enumerate(entries):
            pixels[i] = convert_images(_read_image(path)[None], "bgr", size_wh, color)[0]
            targets[i, labels.index(label)] = 1.0
        result[name] = Split(pixels, targets)
    how = "split folders" if split_dirs else f"hash split val {validation_split:g} / test {test_split:g}"
    return Dataset(labels, result, color, f"image folder '{root}'", (how,))


def load_image_array(path: Path) -> np.ndarray:
    """Face crops for a parity check: a ``.npy`` array, or every image under a folder.

    Returns:
        uint8 ``(N, H, W, C)``; images from a folder are BGR, resized to the first one's size.

    Raises:
        DataError: Nothing usable was found.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy" and path.is_file():
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise DataError(f"image array '{path}' could not be read: {err}") from err
        if array.dtype != np.uint8 or array.ndim not in (3, 4) or len(array) == 0:
            raise DataError(f"image array '{path}': expected uint8 (N, H, W[, C]), got {array.dtype} {array.shape}")
        return array if array.ndim == 4 else array[..., None]
    if path.is_dir():
        files = _list_images(path)[:256]
        if not files:
            raise DataError(f"image folder '{path}': no images found")
        first = _read_image(files[0])
        size = (first.shape[1], first.shape[0])
        return np.stack([convert_images(_read_image(p)[None], "bgr", size, "bgr")[0] for p in files])
    raise DataError(f"images '{path}': expected a folder of images or a .npy file")


def load_dataset(
    *,
    fer2013: Path | None = None,
    ferplus: Path | None = None,
    images: Path | None = None,
    ferplus_dir: Path | None = None,
    size_wh: tuple[int, int] = (FER2013_SIDE, FER2013_SIDE),
    color: Color = "gray",
    label_mode: LabelMode = "majority",
    merge_contempt: bool = True,
    validation_split: float = 0.1,
    test_split: float = 0.1,
    splits: Iterable[str] = SPLITS,
) -> Dataset:
    """Load FER2013 (+ FERPlus) or an image folder, at ``size_wh`` in ``color``.

    Raises:
        DataError: Neither or both sources given, or the data is malformed.
    """
    either = "give one of: a FER2013 CSV (optionally with FERPlus), a FERPlus folder, an image folder"
    if ferplus_dir is not None:
        if fer2013 is not None or ferplus is not None or images is not None:
            raise DataError(either)
        data = load_ferplus_dir(ferplus_dir, label_mode=label_mode, merge_contempt=merge_contempt, splits=splits)
        return data.converted(size_wh, color)
    if fer2013 is None:
        if images is None:
            raise DataError(either)
        if ferplus is not None:
            raise DataError("a FERPlus CSV needs the FER2013 CSV that holds its pixels")
        return load_image_folder(images, size_wh=size_wh, color=color, validation_split=validation_split,
                                 test_split=test_split, splits=splits)
    if images is not None:
        raise DataError(either)
    data = load_fer2013(fer2013, ferplus, label_mode=label_mode, merge_contempt=merge_contempt, splits=splits)
    return data.converted(size_wh, color)


# --------------------------------------------------------------------------- preprocessing


def convert_images(images: np.ndarray, source_color: Color, size_wh: tuple[int, int], color: Color) -> np.ndarray:
    """Turn whole images into model-sized crops exactly as the stream crops a face.

    Each image is treated as a face box covering the whole image, with no
    margin, and cut by the stream's own :func:`stream.infer.classify.crop_faces`:
    a square around it (the short side padded by repeating its edge, never
    stretched), resized bilinearly, converted to ``color``. Training and
    evaluation inputs are then made by the same code as the stream's.

    Args:
        images: uint8 ``(N, H, W)`` or ``(N, H, W, C)`` with C 1 or 3.
        source_color: Colour of ``images`` when they have 3 channels (1 channel is gray).
        size_wh: Target width and height.
        color: Target colour.

    Returns:
        uint8 ``(N, h, w, 1 or 3)``.
    """
    from stream.infer.classify import CropSpec, crop_faces

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3) or images.dtype != np.uint8:
        raise DataError(f"images must be uint8 (N, H, W) or (N, H, W, 1|3), got {images.dtype} {images.shape}")
    src = "gray" if images.shape[3] == 1 else source_color
    channels = 1 if color == "gray" else 3
    if (images.shape[2], images.shape[1]) == tuple(size_wh) and src == color:
        return images
    spec = CropSpec((int(size_wh[0]), int(size_wh[1])), color, crop_margin=0.0)
    out = np.empty((len(images), size_wh[1], size_wh[0], channels), dtype=np.uint8)
    for i, image in enumerate(images):
        bgr = _convert_color(image if src != "gray" else image[..., 0], src, "bgr")
        box = np.array([0.0, 0.0, bgr.shape[1], bgr.shape[0]])
        out[i] = crop_faces(bgr, [box], spec)[0].reshape(out.shape[1:])
    return out


def _convert_color(image: np.ndarray, src: str, dst: str) -> np.ndarray:
    if src == dst:
        return image
    if src == "gray":
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR if dst == "bgr" else cv2.COLOR_GRAY2RGB)
    if dst == "gray":
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if src == "bgr" else cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(image[..., ::-1])  # rgb <-> bgr


def prepare_images(images: np.ndarray, contract: ModelContract, *, source_color: Color = "bgr") -> np.ndarray:
    """Turn uint8 face crops into the model input the contract describes.

    Resize to the contract's input size, convert colour, normalise
    (``x * scale + offset``) and lay out as NHWC or NCHW. No crop margin is
    applied: the images are already face crops.

    Args:
        images: uint8 ``(N, H, W)`` or ``(N, H, W, C)``; 3-channel images are ``source_color``.
        contract: The model's contract.
        source_color: Colour order of 3-channel ``images``.

    Returns:
        float32 array ready for the model.
    """
    crops = convert_images(images, source_color, contract.input_size_wh, contract.color)
    return contract.preprocess(crops, mirrors=False)
