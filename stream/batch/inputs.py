"""Which files a batch job reads, and where each one's outputs go.

An INPUT argument is a file, a folder (searched recursively for videos and
images), a glob (``archive/**/*.mp4``) or a text file listing paths (``.txt``
or ``.list``: one path a line, ``#`` comments; relative paths are relative to
the list's folder). Every input gets a *relative name*: its path below the
common folder of all arguments, so the output folder mirrors the input tree.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from stream.errors import ConfigError
from stream.userfile import read_user_text

__all__ = ["MEDIA_SUFFIXES", "InputFile", "find_inputs"]

VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".wmv", ".flv"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"})
#: What a folder or a glob contributes (a file named on the command line or in a list is always taken).
MEDIA_SUFFIXES = VIDEO_SUFFIXES | IMAGE_SUFFIXES
LIST_SUFFIXES = frozenset({".txt", ".list", ".lst"})
_GLOB_CHARS = set("*?[")
#: A list of inputs larger than this is not a list of paths.
MAX_LIST_BYTES = 16 << 20


@dataclass(frozen=True)
class InputFile:
    """One input of a job.

    Attributes:
        path: Absolute path.
        rel: Its name below the job's common folder (POSIX), e.g. ``day1/room2.mp4``; the outputs mirror it.
        stem: Output base name below ``DIR/<rel's folder>/`` (the file's stem; its full name when two
            inputs of one folder share a stem).
    """

    path: str
    rel: str
    stem: str

    @property
    def key(self) -> str:
        """Stable id of the input in the job folder (from its absolute path)."""
        return hashlib.sha1(self.path.encode("utf-8", "surrogateescape")).hexdigest()[:20]

    def outputs(self, out_dir: Path, image: bool) -> tuple[Path, Path]:
        """The annotated file and the event log under ``out_dir``."""
        folder = out_dir / PurePosixPath(self.rel).parent
        suffix = Path(self.path).suffix if image else ".mp4"
        return folder / f"{self.stem}.annotated{suffix}", folder / f"{self.stem}.events.jsonl"


def _expand(arg: str, from_list: Path | None = None) -> tuple[list[Path], Path, bool]:
    """Files named by one argument, the folder they are mirrored from, and whether it named a glob."""
    path = Path(arg).expanduser()
    if from_list is not None and not path.is_absolute():
        path = from_list.parent / path
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_SUFFIXES)
        return files, path, False
    if not path.exists() and _GLOB_CHARS & set(arg):
        pattern = str(path)
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in MEDIA_SUFFIXES)
        head = Path(pattern)
        while _GLOB_CHARS & set(str(head)):
            head = head.parent
        return files, head, True
    # A file (or a missing one: it fails as an input, with its reason, and the job goes on).
    return [path], path.parent, False


def _read_list(path: Path) -> list[str]:
    text = read_user_text(path, "input list", max_bytes=MAX_LIST_BYTES)
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def find_inputs(args: Sequence[str], exclude: Path | None = None) -> tuple[list[InputFile], list[str]]:
    """Expand the INPUT arguments into files (sorted by relative name, each once).

    Args:
        args: Files, folders, globs and list files.
        exclude: A folder whose files are never inputs (the job's output folder, when it lies inside
            an input folder).

    Returns:
        The inputs, and warnings (a folder or glob that matched nothing).

    Raises:
        ConfigError: No argument, an unreadable list file, or nothing found at all.
    """
    if not args:
        raise ConfigError("batch: give at least one INPUT (file, folder, glob or list of paths)")
    found: list[Path] = []
    roots: list[Path] = []
    warnings: list[str] = []
    for arg in args:
        path = Path(arg).expanduser()
        entries: list[tuple[str, Path | None]]
        if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            entries = [(e, path) for e in _read_list(path)]
        else:
            entries = [(arg, None)]
        for entry, listed_in in entries:
            files, root, was_glob = _expand(entry, listed_in)
            if not files:
                warnings.append(f"input '{entry}' matched no video or image" if was_glob or Path(root).is_dir()
                                else f"input '{entry}' matched nothing")
            found.extend(files)
            roots.append(root)
    if not found:
        raise ConfigError(f"batch: no video or image found in {', '.join(repr(a) for a in args)}")
    absolute = list(dict.fromkeys(Path(os.path.abspath(p)) for p in found))  # keep order, once each
    if exclude is not None:
        # By resolved path: an output folder that is a symlink into an input folder (or an input
        # folder reached through a symlink) must not have the job read its own outputs back.
        skip = Path(os.path.realpath(exclude))
        absolute = [p for p in absolute if not Path(os.path.realpath(p)).is_relative_to(skip)
                    and not p.is_relative_to(Path(os.path.abspath(exclude)))]
        if not absolute:
            raise ConfigError(f"batch: every file found is inside the output folder '{exclude}'")
    base = Path(os.path.commonpath([os.path.abspath(r) for r in roots] + [str(p.parent) for p in absolute]))
    rels = [p.relative_to(base).as_posix() for p in absolute]
    stems: dict[tuple[str, str], int] = {}
    for rel in rels:
        key = (str(PurePosixPath(rel).parent), PurePosixPath(rel).stem)
        stems[key] = stems.get(key, 0) + 1
    inputs = []
    for p, rel in zip(absolute, rels, strict=True):
        pure = PurePosixPath(rel)
        stem = pure.stem if stems[(str(pure.parent), pure.stem)] == 1 else pure.name
        inputs.append(InputFile(str(p), rel, stem))
    return sorted(inputs, key=lambda i: i.rel), warnings
