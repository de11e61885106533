"""Many labelled face sets, one reader: FERPlus folders and ``images/ + labels.csv`` folders, mixed by weight.

Two layouts are read:

* **FERPlus** as its scripts write it (``FER2013Train/ FER2013Valid/ FER2013Test/``):
  :func:`training.data.load_ferplus_dir`, its rules unchanged.
* **images/ + labels.csv**: ``labels.csv`` has at least the columns ``file``
  (a name in ``images/``), ``label`` and ``split`` (``train``, ``valid``/``val``,
  ``test``); every other column is kept, per row, in :attr:`LabelledSet.rows`.

A labels.csv set holds either face crops (each image is the face, as FER2013's
are) or photos and film frames where the face must be found. ``faces: detect``
runs the stream's own detector (:class:`stream.infer.FaceDetector`) on each image,
keeps the **largest** face and cuts it with the stream's own crop
(:func:`stream.infer.classify.crop_faces`, eye-line alignment as
``classifier.align: eyes`` does it), so training sees the framing the stream
gives the model. ``faces: whole`` treats the whole image as the face box
(:func:`training.data.convert_images`). ``faces: auto`` (default) detects when the
first image's shorter side is at least :data:`AUTO_DETECT_MIN_SIDE` pixels (full
photos), else treats the images as crops. Images where no face is found are left
out of the returned splits and counted (:attr:`LabelledSet.not_found`).

Detected crops are cached on disk, under ``$EMOSTREAM_CACHE`` or
``~/.cache/emostream/faces/``, keyed by the labels file, the image folder, the
detector file and its settings, and the crop (size, colour, margin, offset,
alignment): a second load reads one ``.npz`` instead of running the detector.

:func:`load_datasets` reads any number of sets into one :class:`Mixture`: the
splits are concatenated in one label order (FER2013's, other labels after), and
the train split is **resampled by weight**: an image of a set with weight ``w``
is drawn ``w`` times as often as one of a set with weight 1 (the epoch keeps the
size of the plain concatenation). Weights come from a data file (``--data
FILE.yaml``)::

    datasets:
      - path: ../shared/datasets/ferplus      # relative to this file
      - path: ../shared/datasets/taiwanese
        weight: 4
      - path: ../shared/datasets/lfw_expressions
        weight: 0.5
        faces: whole
    crop: {margin: 0.105, offset_y: -0.094, align: eyes}   # optional

or from ``--dataset PATH[,weight=W][,faces=detect|whole|auto][,name=N]`` flags.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stream.contract import FER2013_LABELS
from stream.errors import DataError, OutputError
from stream.render.outputs import OutputGroup
from training.data import (
    FERPLUS_FOLDERS,
    SPLITS,
    Color,
    Dataset,
    LabelMode,
    Split,
    _read_image,
    convert_images,
    load_ferplus_dir,
    normalize_split_name,
)

__all__ = [
    "AUTO_DETECT_MIN_SIDE",
    "CropSettings",
    "DatasetSpec",
    "LabelledSet",
    "Mixture",
    "cache_dir",
    "dataset_kind",
    "face_count_note",
    "largest_faces",
    "load_data_file",
    "load_datasets",
    "load_labelled_set",
    "parse_dataset_arg",
    "read_labels_csv",
    "resolve_splits",
    "weighted_indices",
]

log = logging.getLogger(__name__)

FacesMode = Literal["auto", "detect", "whole"]
#: ``faces: auto`` detects faces when the first image's shorter side is at least this many pixels.
AUTO_DETECT_MIN_SIDE = 200
_CACHE_VERSION = 1


def cache_dir() -> Path:
    """Where detected crops are cached: ``$EMOSTREAM_CACHE`` or ``~/.cache/emostream``, plus ``faces/``."""
    root = os.environ.get("EMOSTREAM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "emostream") / "faces"


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset to read.

    Attributes:
        path: A FERPlus folder or a folder with ``images/`` and ``labels.csv``.
        weight: Sampling weight of each of its training images (relative; > 0).
        faces: ``detect``, ``whole`` or ``auto`` (see the module docstring; FERPlus: ignored).
        name: Short name for reports (default: the folder's name).
    """

    path: Path
    weight: float = 1.0
    faces: FacesMode = "auto"
    name: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.weight, (int, float)) and np.isfinite(self.weight) and self.weight > 0):
            raise DataError(f"dataset '{self.path}': weight must be a number > 0, got {self.weight!r}")
        if self.faces not in ("auto", "detect", "whole"):
            raise DataError(f"dataset '{self.path}': faces must be auto, detect or whole, got {self.faces!r}")

    @property
    def display_name(self) -> str:
        """``name``, or the folder's name."""
        return self.name or Path(self.path).resolve().name


@dataclass(frozen=True)
class CropSettings:
    """How faces found by the detector are cut (the stream's :func:`~stream.infer.classify.crop_faces`).

    Attributes:
        margin: The square box grows by this share of its side on each edge.
        offset_y: The crop centre moves down by this many box sides (negative: up).
        align: ``eyes``: the crop is turned so the eye keypoints lie level; ``none``: upright.
    """

    margin: float = 0.105
    offset_y: float = -0.094
    align: Literal["eyes", "none"] = "eyes"


def parse_dataset_arg(text: str) -> DatasetSpec:
    """``PATH[,weight=W][,faces=detect|whole|auto][,name=N]`` -> :class:`DatasetSpec`.

    Raises:
        DataError: An unknown key or a bad value.
    """
    parts = text.split(",")
    path, options = parts[0].strip(), parts[1:]
    if not path:
        raise DataError(f"--dataset {text!r}: no path")
    values: dict[str, Any] = {}
    for option in options:
        key, sep, value = option.partition("=")
        key = key.strip()
        if not sep or key not in ("weight", "faces", "name"):
            raise DataError(f"--dataset {text!r}: expected PATH[,weight=W][,faces=MODE][,name=N], got {option!r}")
        if key == "weight":
            try:
                values[key] = float(value)
            except ValueError:
                raise DataError(f"--dataset {text!r}: weight must be a number, got {value!r}") from None
        else:
            values[key] = value.strip()
    return DatasetSpec(Path(path), **values)


def load_data_file(path: Path) -> tuple[list[DatasetSpec], CropSettings | None]:
    """Read a data file (YAML, see the module docstring): the datasets and the optional crop.

    Raises:
        DataError: The file is missing, not YAML, or holds unknown keys or bad values.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DataError(f"data file '{path}' could not be read: {err.strerror or err}") from err
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise DataError(f"data file '{path}' is not valid YAML: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), list) or not data["datasets"]:
        raise DataError(f"data file '{path}': expected a mapping with a non-empty 'datasets' list")
    unknown = sorted(set(data) - {"datasets", "crop"})
    if unknown:
        raise DataError(f"data file '{path}': unknown keys {unknown} (expected datasets, crop)")
    specs = []
    for i, item in enumerate(data["datasets"]):
        if isinstance(item, str):
            item = {"path": item}
        if not isinstance(item, dict) or "path" not in item:
            raise DataError(f"data file '{path}': datasets[{i}] must be a path or a mapping with 'path'")
        extra = sorted(set(item) - {"path", "weight", "faces", "name"})
        if extra:
            raise DataError(f"data file '{path}': datasets[{i}]: unknown keys {extra}")
        folder = Path(str(item["path"])).expanduser()
        if not folder.is_absolute():
            folder = path.parent / folder
        try:
            weight = float(item.get("weight", 1.0))
        except (TypeError, ValueError):
            raise DataError(f"data file '{path}': datasets[{i}].weight must be a number") from None
        specs.append(DatasetSpec(folder, weight, item.get("faces", "auto"), str(item.get("name", ""))))
    crop = None
    if "crop" in data:
        raw = data["crop"]
        if not isinstance(raw, dict) or set(raw) - {"margin", "offset_y", "align"}:
            raise DataError(f"data file '{path}': crop must be a mapping of margin, offset_y, align")
        try:
            crop = CropSettings(float(raw.get("margin", 0.105)), float(raw.get("offset_y", -0.094)),
                                raw.get("align", "eyes"))
        except (TypeError, ValueError):
            raise DataError(f"data file '{path}': crop margin and offset_y must be numbers") from None
        if crop.align not in ("eyes", "none"):
            raise DataError(f"data file '{path}': crop.align must be eyes or none, got {crop.align!r}")
    return specs, crop


def dataset_kind(path: Path) -> Literal["ferplus", "labels_csv"]:
    """``ferplus`` for a FERPlus folder, ``labels_csv`` for ``images/ + labels.csv``.

    Raises:
        DataError: Neither layout.
    """
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"dataset '{path}' does not exist or is not a folder")
    if any((path / folder).is_dir() for folder in FERPLUS_FOLDERS.values()):
        return "ferplus"
    if (path / "labels.csv").is_file() and (path / "images").is_dir():
        return "labels_csv"
    raise DataError(f"dataset '{path}': neither a FERPlus folder ({', '.join(FERPLUS_FOLDERS.values())}) "
                    "nor images/ + labels.csv")


def read_labels_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a ``labels.csv`` (``file``, ``label``, ``split`` required; other columns kept).

    ``split`` is normalised to ``train`` / ``val`` / ``test``.

    Raises:
        DataError: Unreadable, a required column missing, or a row with an empty file/label or bad split.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in ("file", "label", "split") if c not in header]
            if missing:
                raise DataError(f"labels '{path}': missing columns {missing} (has {header})")
            rows = []
            for i, raw in enumerate(reader):
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
                if not row["file"] or not row["label"]:
                    raise DataError(f"labels '{path}': line {i + 2}: empty file or label")
                try:
                    row["split"] = normalize_split_name(row["split"])
                except DataError as err:
                    raise DataError(f"labels '{path}': line {i + 2}: {err}") from None
                rows.append(row)
    except OSError as err:
        raise DataError(f"labels '{path}' could not be read: {err.strerror or err}") from err
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"labels '{path}': not a valid CSV file: {err}") from err
    if not rows:
        raise DataError(f"labels '{path}': no rows")
    return rows


def ordered_labels(labels: Iterable[str]) -> tuple[str, ...]:
    """FER2013's labels that occur, in FER2013 order, then any others sorted."""
    present = set(labels)
    return (*(x for x in FER2013_LABELS if x in present), *sorted(present - set(FER2013_LABELS)))


def largest_faces(detector: Any, images_bgr: Sequence[np.ndarray]) -> list[tuple[Any | None, int]]:
    """Per image: its largest detected face (a ``Detection``, or None) and how many faces were found."""
    out: list[tuple[Any | None, int]] = []
    for dets in detector.detect(list(images_bgr)):
        if not dets:
            out.append((None, 0))
            continue
        areas = [float((d.box_xyxy[2] - d.box_xyxy[0]) * (d.box_xyxy[3] - d.box_xyxy[1])) for d in dets]
        out.append((dets[int(np.argmax(areas))], len(dets)))
    return out


@dataclass(frozen=True)
class LabelledSet:
    """A dataset read by :func:`load_labelled_set`, with what the reader saw.

    Attributes:
        spec: What was asked for.
        dataset: The faces found, as a :class:`training.data.Dataset`.
        rows: Per split, the ``labels.csv`` rows (all columns) of the faces in ``dataset``, in order.
        not_found: Per split, the rows where no face was found (left out of ``dataset``).
        faces_mode: ``detect``, ``whole`` or ``ferplus``.
    """

    spec: DatasetSpec
    dataset: Dataset
    rows: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    not_found: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    faces_mode: str = "whole"


def _resolve_faces(spec: DatasetSpec, images_dir: Path, rows: list[dict[str, str]]) -> str:
    if spec.faces != "auto":
        return spec.faces
    first = _read_image(images_dir / rows[0]["file"])
    return "detect" if min(first.shape[:2]) >= AUTO_DETECT_MIN_SIDE else "whole"


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _detector_key(detector: Any, detector_path: Path | None) -> str:
    settings = {k: getattr(detector, k, None) for k in ("score_threshold", "nms_iou", "min_face_px", "input_size")}
    where = _stat_key(Path(detector_path)) if detector_path is not None else getattr(detector, "name", "detector")
    return f"{where}:{json.dumps(settings, sort_keys=True, default=str)}"


def _detect_crops(images_dir: Path, files: list[str], detector: Any, size_wh: tuple[int, int], color: Color,
                  crop: CropSettings, batch: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Largest face of each image cut by the stream's crop: ``(crops, found, n_faces)``."""
    from stream.infer.classify import CropSpec, crop_faces, eye_roll_deg

    spec = CropSpec(size_wh, color, crop.margin, crop.offset_y)
    channels = 1 if color == "gray" else 3
    crops = np.zeros((len(files), size_wh[1], size_wh[0], channels), np.uint8)
    found = np.zeros(len(files), bool)
    n_faces = np.zeros(len(files), np.int32)
    for start in range(0, len(files), batch):
        images = [_read_image(images_dir / name) for name in files[start:start + batch]]
        for k, (image, (det, count)) in enumerate(zip(images, largest_faces(detector, images), strict=True)):
            n_faces[start + k] = count
            if det is None:
                continue
            roll = [eye_roll_deg(det.keypoints_xy)] if crop.align == "eyes" else None
            crops[start + k] = crop_faces(image, [det.box_xyxy], spec, roll)[0].reshape(crops.shape[1:])
            found[start + k] = True
    return crops, found, n_faces


def load_labelled_set(
    spec: DatasetSpec,
    *,
    size_wh: tuple[int, int],
    color: Color = "gray",
    splits: Iterable[str] = SPLITS,
    crop: CropSettings | None = None,
    detector: Any = None,
    detector_path: Path | None = None,
    use_cache: bool = True,
) -> LabelledSet:
    """Read one ``images/ + labels.csv`` set at ``size_wh`` in ``color`` (see the module docstring).

    Args:
        spec: The set.
        size_wh: Crop size.
        color: Crop colour.
        splits: Splits to read (others are skipped; a split the set lacks is empty).
        crop: The crop of detected faces (default :class:`CropSettings`).
        detector: A :class:`stream.infer.FaceDetector` for ``faces: detect``; default: the
            stream's default detector (``config.yaml``'s), loaded on first need.
        detector_path: The detector's file, for the cache key (default: the config's).
        use_cache: Read and write the crop cache.

    Raises:
        DataError: Bad layout, unreadable labels or images.
    """
    root = Path(spec.path)
    images_dir, labels_path = root / "images", root / "labels.csv"
    rows = read_labels_csv(labels_path)
    wanted = {normalize_split_name(s) for s in splits}
    labels = ordered_labels(r["label"] for r in rows)
    mode = _resolve_faces(spec, images_dir, rows)
    crop = crop or CropSettings()
    selected = [r for r in rows if r["split"] in wanted]
    files = [r["file"] for r in selected]
    if mode == "whole":
        crops = (np.stack([convert_images(_read_image(images_dir / f)[None], "bgr", size_wh, color)[0]
                           for f in files]) if files
                 else np.zeros((0, size_wh[1], size_wh[0], 1 if color == "gray" else 3), np.uint8))
        found = np.ones(len(files), bool)
    else:
        if detector is None or detector_path is None:
            from stream.config import Config

            config = Config()
            detector_path = detector_path or config.detector.model
            if detector is None:
                from stream.infer import FaceDetector

                detector = FaceDetector.from_path(config.detector.model, ("cpu",), 0,
                                                  config.detector.score_threshold, config.detector.nms_iou,
                                                  config.detector.min_face_px)
        key = hashlib.sha1("|".join([
            str(_CACHE_VERSION), _stat_key(labels_path), _stat_key(images_dir), _detector_key(detector, detector_path),
            json.dumps([list(size_wh), color, crop.margin, crop.offset_y, crop.align]), ",".join(files),
        ]).encode()).hexdigest()[:24]
        path = cache_dir() / f"{root.resolve().name}-{key}.npz"
        cached = None
        if use_cache and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as data:
                    cached = (data["crops"], data["found"], data["n_faces"])
            except (OSError, ValueError, KeyError) as err:
                log.warning("crop cache '%s' unreadable (%s): detecting again", path, err)
        if cached is None:
            log.info("%s: finding faces in %d images (cached in %s)", spec.display_name, len(files), path.parent)
            cached = _detect_crops(images_dir, files, detector, size_wh, color, crop)
            if use_cache:
                try:
                    with OutputGroup() as out:
                        target = out.add(path, "crop cache")
                        np.savez(target.write_path, crops=cached[0], found=cached[1], n_faces=cached[2])
                        out.commit()
                except OutputError as err:
                    log.warning("%s", err)
                except OSError as err:
                    log.warning("crop cache '%s' could not be written: %s", path, err)
        crops, found = cached[0], cached[1]
    result: dict[str, Split] = {}
    kept_rows: dict[str, list[dict[str, str]]] = {}
    missed: dict[str, list[dict[str, str]]] = {}
    for name in SPLITS:
        if name not in wanted:
            continue
        index = [i for i, r in enumerate(selected) if r["split"] == name]
        keep = [i for i in index if found[i]]
        targets = np.zeros((len(keep), len(labels)), np.float32)
        for j, i in enumerate(keep):
            targets[j, labels.index(selected[i]["label"])] = 1.0
        result[name] = Split(crops[keep] if keep else crops[:0], targets)
        kept_rows[name] = [selected[i] for i in keep]
        missed[name] = [selected[i] for i in index if not found[i]]
    n_missed = sum(len(v) for v in missed.values())
    notes = (f"faces: {mode}", f"{n_missed} of {len(selected)} images without a face found (left out)")
    dataset = Dataset(labels, result, color, f"{spec.display_name} '{root}'", notes)
    return LabelledSet(spec, dataset, kept_rows, missed, mode)


@dataclass(frozen=True)
class Mixture:
    """Several datasets read as one (:func:`load_datasets`).

    Attributes:
        dataset: The concatenated splits in one label order; ``train`` resampled by the weights.
        parts: Each set as read, by name (for per-set scores).
    """

    dataset: Dataset
    parts: dict[str, LabelledSet]


def _remap(split: Split, labels: tuple[str, ...], into: tuple[str, ...]) -> np.ndarray:
    targets = np.zeros((len(split), len(into)), np.float32)
    for j, label in enumerate(labels):
        targets[:, into.index(label)] = split.targets[:, j]
    return targets


def weighted_indices(sizes: Sequence[int], weights: Sequence[float], seed: int) -> list[np.ndarray]:
    """Per set, the indices of its images drawn for one training epoch.

    Each image of set ``d`` is drawn ``weights[d] * total / sum_e(weights[e] * sizes[e])``
    times on average (``total = sum(sizes)``): the whole part of that number for every
    image, plus one more for a random share of them. Deterministic for a seed.
    """
    sizes = [int(n) for n in sizes]
    total = sum(sizes)
    mass = sum(w * n for w, n in zip(weights, sizes, strict=True))
    rng = np.random.default_rng(seed)
    out = []
    for n, w in zip(sizes, weights, strict=True):
        if n == 0:
            out.append(np.zeros(0, np.int64))
            continue
        per_image = w * total / mass
        whole = int(np.floor(per_image))
        extra = round((per_image - whole) * n)
        idx = np.concatenate([np.tile(np.arange(n), whole), rng.choice(n, size=extra, replace=False)])
        out.append(np.sort(idx).astype(np.int64))
    return out


def load_datasets(
    specs: Sequence[DatasetSpec],
    *,
    size_wh: tuple[int, int],
    color: Color = "gray",
    label_mode: LabelMode = "majority",
    merge_contempt: bool = True,
    splits: Iterable[str] = SPLITS,
    crop: CropSettings | None = None,
    detector: Any = None,
    detector_path: Path | None = None,
    seed: int = 0,
    use_cache: bool = True,
) -> Mixture:
    """Read every set and mix them (see the module docstring).

    FERPlus sets keep their votes only when they are read alone (the majority rule
    needs them; a mixed split has none). Soft FERPlus targets stay soft.

    Raises:
        DataError: No sets, a bad set, or two sets with the same name.
    """
    if not specs:
        raise DataError("no datasets given")
    splits = tuple(normalize_split_name(s) for s in splits)
    parts: dict[str, LabelledSet] = {}
    for spec in specs:
        name = spec.display_name
        if name in parts:
            raise DataError(f"two datasets are called '{name}': give one a name (name=...)")
        if dataset_kind(spec.path) == "ferplus":
            data = load_ferplus_dir(spec.path, label_mode=label_mode, merge_contempt=merge_contempt,
                                    splits=[s for s in splits
                                            if (Path(spec.path) / FERPLUS_FOLDERS[s]).is_dir()])
            parts[name] = LabelledSet(spec, data.converted(size_wh, color), faces_mode="ferplus")
        else:
            parts[name] = load_labelled_set(spec, size_wh=size_wh, color=color, splits=splits, crop=crop,
                                            detector=detector, detector_path=detector_path, use_cache=use_cache)
    if len(parts) == 1:
        only = next(iter(parts.values()))
        return Mixture(only.dataset, parts)
    labels = ordered_labels(label for p in parts.values() for label in p.dataset.labels)
    channels = 1 if color == "gray" else 3
    mixed: dict[str, Split] = {}
    for split in splits:
        pieces = [(p, s) for p in parts.values() if (s := p.dataset.splits.get(split)) is not None and len(s)]
        if not pieces:
            mixed[split] = Split(np.zeros((0, size_wh[1], size_wh[0], channels), np.uint8),
                                 np.zeros((0, len(labels)), np.float32))
            continue
        images = [s.images for _, s in pieces]
        targets = [_remap(s, p.dataset.labels, labels) for p, s in pieces]
        if split == "train":
            draws = weighted_indices([len(s) for _, s in pieces], [p.spec.weight for p, _ in pieces], seed)
            images = [im[i] for im, i in zip(images, draws, strict=True)]
            targets = [t[i] for t, i in zip(targets, draws, strict=True)]
        mixed[split] = Split(np.concatenate(images), np.concatenate(targets))
    notes = tuple(f"{name} (weight {p.spec.weight:g}): " + "; ".join(p.dataset.notes) for name, p in parts.items())
    source = " + ".join(parts)
    return Mixture(Dataset(labels, mixed, color, source, notes), parts)


def resolve_splits(parts: dict[str, LabelledSet], split: str) -> dict[str, Split]:
    """Each part's ``split`` when it has one with images."""
    key = normalize_split_name(split)
    return {name: p.dataset.splits[key] for name, p in parts.items()
            if key in p.dataset.splits and len(p.dataset.splits[key])}


def face_count_note(part: LabelledSet) -> str:
    """One line: how many faces were found, per split."""
    bits = [f"{s} {len(part.rows.get(s, []))}/{len(part.rows.get(s, [])) + len(part.not_found.get(s, []))}"
            for s in SPLITS if s in part.rows]
    return f"{part.spec.display_name}: faces {part.faces_mode}; found " + ", ".join(bits) if bits else \
        f"{part.spec.display_name}: {part.faces_mode}"


def read_image(path: Path) -> np.ndarray:
    """Any image file as uint8 BGR (re-exported for the scorecard)."""
    return _read_image(Path(path))

