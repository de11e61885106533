"""The job's dataset: tidy tables built from the event logs, one part per input, combined at the end.

``faces.parquet``: one row per face per frame::

    source  frame  t_s  track_id  x1  y1  x2  y2  score  label  prob_<label> ...

``videos.parquet``: one row per input (duration, frames, faces, tracks, share of each label).
``tracks.parquet``: one row per track of each input (first and last time, faces, top label, shares).

Each input's rows are written to a part file when it finishes; the tables are
rebuilt from the finished parts, in input order, at the end of every run of the
job, so a resumed job has every row exactly once. pyarrow is imported here only.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from stream.episodes import read_event_log
from stream.errors import ConfigError, OutputError
from stream.render.outputs import OutputFile, OutputGroup

__all__ = ["FACES", "TRACKS", "VIDEOS", "InputTables", "combine", "input_tables", "require_pyarrow"]

FACES, VIDEOS, TRACKS = "faces", "videos", "tracks"


def require_pyarrow() -> Any:
    """Import pyarrow, or say how to install it."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as err:
        raise ConfigError("emostream batch writes Parquet with pyarrow, which is not installed: "
                          "pip install 'emostream[batch]'") from err
    return pyarrow


#: The classifier's extra heads (``ModelContract.heads``): ``[name, [component, ...]]`` pairs.
Heads = Sequence[Sequence[Any]]


def _head_columns(heads: Heads) -> list[tuple[str, str, str]]:
    """``(column, head, component)`` per value of every extra head: column ``<head>_<component>``."""
    return [(f"{name}_{part}", name, part) for name, parts in heads for part in parts]


def _faces_schema(labels: Sequence[str], heads: Heads = ()) -> Any:
    pa = require_pyarrow()
    return pa.schema([("source", pa.string()), ("frame", pa.int32()), ("t_s", pa.float64()),
                      ("track_id", pa.int32()), ("x1", pa.float64()), ("y1", pa.float64()),
                      ("x2", pa.float64()), ("y2", pa.float64()), ("score", pa.float64()),
                      ("label", pa.string())] + [(f"prob_{label}", pa.float64()) for label in labels]
                     + [(column, pa.float64()) for column, _, _ in _head_columns(heads)])


class InputTables:
    """One input's rows, read from its event log.

    Attributes:
        faces: Column lists of the faces table.
        video: The input's row of the videos table.
        tracks: Its rows of the tracks table.
    """

    def __init__(self, faces: dict[str, list], video: dict[str, Any], tracks: list[dict[str, Any]]) -> None:
        self.faces = faces
        self.video = video
        self.tracks = tracks

    @property
    def rows(self) -> int:
        return len(self.faces["frame"])


def _shares(counts: Counter, names: Sequence[str]) -> dict[str, float]:
    total = sum(counts.values())
    return {f"share_{n}": round(counts[n] / total, 4) if total else 0.0 for n in names}


def input_tables(events: Path, source: str, labels: Sequence[str], share_labels: Sequence[str],
                 *, heads: Heads = (), image: bool) -> InputTables:
    """Read one finished event log into table rows.

    Args:
        events: The input's JSON Lines event log.
        source: Its relative name (the ``source`` column).
        labels: The classifier's labels (one ``prob_`` column each).
        share_labels: Labels that get a ``share_`` column (``labels`` plus ``uncertain`` when used).
        image: A still image (duration 0).
        heads: The classifier's extra heads: a ``<head>_<component>`` column per value.

    Raises:
        DataError: The log cannot be read (:func:`stream.episodes.read_event_log`).
        OutputError: It holds a line that is not an event record.
    """
    cols: dict[str, list] = {name: [] for name in _faces_schema(labels, heads).names}
    head_columns = _head_columns(heads)
    frames = 0
    ts: list[float] = []
    with_faces = 0
    per_track: dict[int, list[tuple[float, str]]] = {}
    for n, rec in read_event_log(events):  # DataError for a file that is not a readable event log
        try:
            frame, t, faces = int(rec["frame"]), float(rec["t"]), rec["faces"]
        except (ValueError, KeyError, TypeError) as err:
            raise OutputError(f"event log '{events}' line {n} is not an event record: {err}") from err
        frames += 1
        ts.append(t)
        with_faces += bool(faces)
        for face in faces:
            box = face["box_xyxy"]
            cols["source"].append(source)
            cols["frame"].append(frame)
            cols["t_s"].append(t)
            cols["track_id"].append(int(face["id"]))
            for name, v in zip(("x1", "y1", "x2", "y2"), box, strict=True):
                cols[name].append(v)
            cols["score"].append(face["score"])
            cols["label"].append(face["label"])
            for label in labels:
                cols[f"prob_{label}"].append(face["probs"].get(label))
            for column, head, part in head_columns:
                cols[column].append((face.get(head) or {}).get(part))
            per_track.setdefault(int(face["id"]), []).append((t, face["label"]))
    # Duration: the last frame's time plus one frame interval (the median step), 0 for an image.
    steps = sorted(b - a for a, b in itertools.pairwise(ts))
    duration = 0.0 if image or not ts else ts[-1] - ts[0] + (steps[len(steps) // 2] if steps else 0.0)
    all_labels = Counter(cols["label"])
    video = {"source": source, "kind": "image" if image else "video", "duration_s": round(duration, 4),
             "frames": frames, "frames_with_faces": with_faces, "faces": len(cols["frame"]),
             "tracks": len(per_track), **_shares(all_labels, share_labels)}
    tracks = []
    for track_id in sorted(per_track):
        seen = per_track[track_id]
        counts = Counter(label for _, label in seen)
        tracks.append({"source": source, "track_id": track_id, "first_t_s": seen[0][0], "last_t_s": seen[-1][0],
                       "faces": len(seen), "top_label": counts.most_common(1)[0][0],
                       **_shares(counts, share_labels)})
    return InputTables(cols, video, tracks)


def _video_schema(share_labels: Sequence[str]) -> Any:
    pa = require_pyarrow()
    return pa.schema([("source", pa.string()), ("kind", pa.string()), ("duration_s", pa.float64()),
                      ("frames", pa.int64()), ("frames_with_faces", pa.int64()), ("faces", pa.int64()),
                      ("tracks", pa.int64())] + [(f"share_{n}", pa.float64()) for n in share_labels])


def _track_schema(share_labels: Sequence[str]) -> Any:
    pa = require_pyarrow()
    return pa.schema([("source", pa.string()), ("track_id", pa.int32()), ("first_t_s", pa.float64()),
                      ("last_t_s", pa.float64()), ("faces", pa.int64()), ("top_label", pa.string())]
                     + [(f"share_{n}", pa.float64()) for n in share_labels])


def write_part(tables: InputTables, labels: Sequence[str], share_labels: Sequence[str], part: Path, *,
               heads: Heads = ()) -> None:
    """Write one input's faces and tracks as Parquet part files (``PART.faces.parquet``, ``PART.tracks.parquet``).

    Written under a temporary name and renamed, so a part file is always whole.
    """
    pa = require_pyarrow()
    import pyarrow.parquet as pq

    for kind, table in ((FACES, pa.Table.from_pydict(tables.faces, schema=_faces_schema(labels, heads))),
                        (TRACKS, pa.Table.from_pylist(tables.tracks, schema=_track_schema(share_labels)))):
        with OutputGroup() as out:
            target = out.add(part.with_name(f"{part.name}.{kind}.parquet"), "dataset part")
            with _arrow_errors(target):
                pq.write_table(table, target.write_path)
            out.commit()


@contextlib.contextmanager
def _arrow_errors(target: OutputFile) -> Iterator[None]:
    """pyarrow's I/O errors (``ArrowIOError`` is an ``OSError``: a full disk) as one-line OutputErrors."""
    try:
        yield
    except OSError as err:
        raise OutputError(f"{target.what} '{target.path}' could not be written: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from err


def part_files(part: Path) -> tuple[Path, Path]:
    """The faces and tracks part files of one input."""
    return part.with_name(f"{part.name}.{FACES}.parquet"), part.with_name(f"{part.name}.{TRACKS}.parquet")


def combine(parts: Iterable[Path], videos: list[dict[str, Any]], labels: Sequence[str],
            share_labels: Sequence[str], out_dir: Path, *, csv: bool, heads: Heads = ()) -> dict[str, Path | int]:
    """Write ``faces``, ``videos`` and ``tracks`` (Parquet, and CSV when asked) from the finished parts.

    Streams part by part (memory holds one input's rows). Each table is written under a
    temporary name and renamed.

    Returns:
        ``{"faces": path, "videos": path, "tracks": path, "rows": faces rows, ...csv paths}``.
    """
    pa = require_pyarrow()
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    parts = list(parts)
    written: dict[str, Path | int] = {}
    schemas = {FACES: _faces_schema(labels, heads), TRACKS: _track_schema(share_labels)}
    with OutputGroup() as out:
        # All tables published together at the end: an interrupted or failed combine leaves the
        # earlier dataset as it was.
        for kind, schema in schemas.items():
            rows = 0
            target = out.add(out_dir / f"{kind}.parquet", "dataset")
            csv_target = out.add(out_dir / f"{kind}.csv", "dataset") if csv else None
            with _arrow_errors(target), pq.ParquetWriter(target.write_path, schema) as writer, \
                    (pcsv.CSVWriter(csv_target.write_path, schema) if csv_target is not None
                     else contextlib.nullcontext()) as csv_writer:
                for part in parts:
                    table = pq.read_table(part_files(part)[0 if kind == FACES else 1], schema=schema)
                    writer.write_table(table)
                    if csv_writer is not None:
                        csv_writer.write_table(table)
                    rows += table.num_rows
            written[kind] = target.path
            written[f"{kind}_rows"] = rows
            if csv_target is not None:
                written[f"{kind}_csv"] = csv_target.path
        table = pa.Table.from_pylist(videos, schema=_video_schema(share_labels))
        target = out.add(out_dir / f"{VIDEOS}.parquet", "dataset")
        with _arrow_errors(target):
            pq.write_table(table, target.write_path)
        written[VIDEOS] = target.path
        written[f"{VIDEOS}_rows"] = table.num_rows
        if csv:
            csv_target = out.add(out_dir / f"{VIDEOS}.csv", "dataset")
            with _arrow_errors(csv_target):
                pcsv.write_csv(table, csv_target.write_path)
            written[f"{VIDEOS}_csv"] = csv_target.path
        out.commit()
    return written
