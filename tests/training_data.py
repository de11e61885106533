"""Synthetic datasets in the real files' formats, for the training tests.

The real FER2013 / FERPlus files cannot be downloaded here, so these helpers
write small files in exactly their formats whose images carry one
class-dependent texture each (stripes of a given orientation and period,
rings, a checkerboard, a blob, dots...) under random phase, contrast,
brightness and noise. The textures survive the training augmentation
(rotation up to 20 degrees, 10 % shifts, horizontal flips), so a small CNN
learns them in a few epochs: accuracy far above chance means the whole path
(parsing, labels, pipeline, model, evaluation, export) is wired right.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from stream.contract import FER2013_LABELS

__all__ = [
    "FERPLUS_COLUMNS",
    "N_PATTERNS",
    "make_images",
    "make_pattern",
    "noise_pixels",
    "write_fer2013_csv",
    "write_ferplus_csv",
    "write_ferplus_pair",
    "write_image_folder",
]

#: Number of distinct textures (FER2013's 7 classes plus FERPlus contempt).
N_PATTERNS = 8
FERPLUS_COLUMNS = ("Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger",
                   "disgust", "fear", "contempt", "unknown", "NF")
# FERPlus emotion column of each FER2013 label, plus contempt last.
_FERPLUS_OF_LABEL = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
                     "sad": "sadness", "surprise": "surprise", "neutral": "neutral", "contempt": "contempt"}


def make_pattern(kind: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """One uint8 ``(size, size)`` image of texture ``kind`` (0 .. N_PATTERNS - 1)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size * 48.0
    cy, cx = 24 + rng.uniform(-4, 4), 24 + rng.uniform(-4, 4)
    r = np.hypot(yy - cy, xx - cx)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == 0:    # horizontal stripes, period 6
        base = np.sin(2 * np.pi * yy / 6 + phase)
    elif kind == 1:  # vertical stripes, period 6
        base = np.sin(2 * np.pi * xx / 6 + phase)
    elif kind == 2:  # checkerboard, cell 6
        base = np.sign(np.sin(np.pi * xx / 6 + phase) * np.sin(np.pi * yy / 6 + phase))
    elif kind == 3:  # concentric rings, period 7
        base = np.sin(2 * np.pi * r / 7 + phase)
    elif kind == 4:  # one bright blob
        base = 2 * np.exp(-(r / rng.uniform(8, 11)) ** 2) - 1
    elif kind == 5:  # grid of small dots
        base = 2 * ((np.sin(2 * np.pi * xx / 8 + phase) > 0.8) & (np.sin(2 * np.pi * yy / 8 + phase) > 0.8)) - 1.0
    elif kind == 6:  # horizontal stripes, period 14
        base = np.sin(2 * np.pi * yy / 14 + phase)
    elif kind == 7:  # dark ring on a flat field
        base = 1 - 2 * np.exp(-((r - 13) / 3) ** 2)
    else:
        raise ValueError(f"kind must be 0..{N_PATTERNS - 1}, got {kind}")
    contrast = rng.uniform(45, 80)
    brightness = rng.uniform(100, 155)
    image = brightness + contrast * base + rng.normal(0, 14, base.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_images(kinds: Sequence[int], seed: int, size: int = 48) -> np.ndarray:
    """uint8 ``(N, size, size)`` images of the given kinds."""
    rng = np.random.default_rng(seed)
    return np.stack([make_pattern(int(k), rng, size) for k in kinds])


def _pixels(image: np.ndarray) -> str:
    return " ".join(map(str, image.reshape(-1).tolist()))


def write_fer2013_csv(
    path: Path, per_class: dict[str, int] | None = None, *, n_classes: int = 7, seed: int = 0,
    extra_rows: Sequence[tuple[str, str]] = (),
) -> np.ndarray:
    """Write a FER2013-format CSV (``emotion,pixels,Usage``); texture ``k`` has label ``k``.

    Args:
        path: File to write.
        per_class: Images per class for each Usage; default Training 36, PublicTest 10, PrivateTest 10.
        n_classes: How many of FER2013's labels get images (the others: none).
        seed: Random seed.
        extra_rows: ``(pixels, Usage)`` rows of pure noise appended with label 0 (for FERPlus NF rows).

    Returns:
        The texture kind of each row (the ``emotion`` column, except texture 7 which is filed as 6).
    """
    per_class = per_class or {"Training": 36, "PublicTest": 10, "PrivateTest": 10}
    rng = np.random.default_rng(seed)
    emotions = []
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["emotion", "pixels", "Usage"])
        for usage, n in per_class.items():
            kinds = np.repeat(np.arange(n_classes), n)
            rng.shuffle(kinds)
            for k in kinds:
                # FER2013 has no contempt: texture 7 (FERPlus contempt) is filed as neutral.
                writer.writerow([min(int(k), 6), _pixels(make_pattern(int(k), rng)), usage])
                emotions.append(int(k))
        for pixels, usage in extra_rows:
            writer.writerow([0, pixels, usage])
            emotions.append(0)
    return np.array(emotions)


def noise_pixels(seed: int) -> str:
    """A 48x48 pixel string of uniform noise (a 'not a face' row)."""
    return _pixels(np.random.default_rng(seed).integers(0, 256, (48, 48), dtype=np.uint8))


def write_ferplus_csv(
    path: Path, fer_rows: Sequence[tuple[int | None, str]], *, seed: int = 0, contempt_kind: int | None = None
) -> None:
    """Write a FERPlus-format CSV matching a FER2013 CSV row by row.

    Args:
        path: File to write.
        fer_rows: Per FER2013 row, ``(texture kind or None, Usage)``; None rows get mostly ``NF`` votes.
        seed: Random seed for the vote noise.
        contempt_kind: Texture whose rows are voted ``contempt`` (instead of its FER2013 label).
    """
    rng = np.random.default_rng(seed)
    labels = list(FER2013_LABELS)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(FERPLUS_COLUMNS)
        for i, (kind, usage) in enumerate(fer_rows):
            votes = dict.fromkeys(FERPLUS_COLUMNS[2:], 0)
            if kind is None:
                votes["NF"] = 8
                votes["unknown"] = 2
                name = ""
            else:
                label = "contempt" if kind == contempt_kind else labels[kind]
                votes[_FERPLUS_OF_LABEL[label]] = int(rng.integers(6, 10))
                other = str(rng.choice([c for c in FERPLUS_COLUMNS[2:] if c != _FERPLUS_OF_LABEL[label]]))
                votes[other] += 10 - sum(votes.values())
                name = f"fer{i:07d}.png"
            writer.writerow([usage, name, *[votes[c] for c in FERPLUS_COLUMNS[2:]]])


def write_ferplus_pair(
    fer2013_path: Path, ferplus_path: Path, per_class: dict[str, int] | None = None, *,
    n_classes: int = 7, not_a_face: int = 6, contempt_kind: int | None = None, seed: int = 0,
) -> np.ndarray:
    """Write a FER2013 CSV and the FERPlus CSV that relabels it.

    Texture ``k`` gets FERPlus votes for FER2013 label ``k`` (``contempt`` for
    ``contempt_kind``); ``not_a_face`` noise rows (half Training, half
    PublicTest) get mostly ``NF`` votes and must be dropped.

    Returns:
        The texture kind per row, -1 for the not-a-face rows.
    """
    usages = ["Training", "PublicTest"] * (not_a_face // 2) + ["Training"] * (not_a_face % 2)
    extra = [(noise_pixels(seed * 1000 + i), usage) for i, usage in enumerate(usages)]
    kinds = write_fer2013_csv(fer2013_path, per_class, n_classes=n_classes, seed=seed, extra_rows=extra)
    kinds[len(kinds) - len(extra):] = -1
    with open(fer2013_path, newline="", encoding="utf-8") as fh:
        usage_of_row = [row[2] for row in list(csv.reader(fh))[1:]]
    rows = [(None if k < 0 else int(k), u) for k, u in zip(kinds, usage_of_row, strict=True)]
    write_ferplus_csv(ferplus_path, rows, seed=seed, contempt_kind=contempt_kind)
    return kinds


def write_image_folder(
    root: Path, classes: Sequence[str], per_class: int, *, seed: int = 0,
    sizes: Sequence[tuple[int, int]] = ((64, 64), (40, 52), (96, 80)),
) -> None:
    """Write ``root/<class>/<n>.png|jpg`` images of texture ``i`` for ``classes[i]``.

    Sizes cycle through ``sizes`` (width, height); every other image is
    colour (tinted BGR) and JPEG, the rest gray PNG.
    """
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            image = cv2.resize(make_pattern(k, rng, size=max(w, h)), (w, h), interpolation=cv2.INTER_AREA)
            if i % 2:
                tint = rng.uniform(0.7, 1.0, 3)
                color = np.clip(image[..., None] * tint, 0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / f"{i:04d}.jpg"), color, [cv2.IMWRITE_JPEG_QUALITY, 95])
            else:
                cv2.imwrite(str(folder / f"{i:04d}.png"), image)
