"""Which sources a run reads: :class:`SourceSpec`, and the ``--sources FILE.yaml`` format.

A sources file is a list (or a mapping with a ``sources:`` list); each item is a
path/URL/webcam index, or a mapping::

    sources:
      - rtsp://user@192.168.1.20/stream1          # name: stream1
      - name: door
        source: rtsp://192.168.1.21/live          # also spelled path: or url:
        max_frames: 900
        events: logs/door.jsonl                   # default <output.dir>/door.events.jsonl
      - path: recordings/hall.mp4
        paced: true                               # played as a live camera (real time, looped)
      - recordings/monday.mp4
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from stream.capture.live import is_stream_url
from stream.errors import ConfigError

__all__ = ["SourceSpec", "load_sources", "source_name", "unique_names"]


@dataclass(frozen=True)
class SourceSpec:
    """One source of a run.

    Attributes:
        spec: A video or image path, a webcam index (``"0"``) or a stream URL.
        name: Name for outputs and messages (default: from ``spec``, see :func:`source_name`).
        output: Annotated video/image path (default: ``<output.dir>/<name>.annotated.*``).
        events: Event log path (default: ``<output.dir>/<name>.events.jsonl``).
        max_frames: Stop this source after this many frames.
        paced: A video file plays as a live camera: at its frame rate, looped, newest frames kept.
    """

    spec: str
    name: str = ""
    output: Path | None = None
    events: Path | None = None
    max_frames: int | None = None
    paced: bool = False


def source_name(spec: str) -> str:
    """A short name from a source argument: ``webcam0``, ``stream`` (a URL), or the file's stem."""
    if spec.isdigit():
        return f"webcam{spec}"
    if is_stream_url(spec):
        return "stream"
    return Path(spec).stem


def _url_name(spec: str) -> str:
    """For several cameras: the URL's last path part or its host (``stream1``, ``192.168.1.20``)."""
    parts = urlsplit(spec)
    tail = parts.path.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^\w.-]", "_", tail or parts.hostname or "stream")


def unique_names(specs: Sequence[SourceSpec]) -> list[SourceSpec]:
    """Give every source a name, unique in the run (``name``, ``name-2`` ...): outputs are named after it."""
    several = len(specs) > 1
    taken: set[str] = {s.name for s in specs if s.name}
    if len(taken) != sum(1 for s in specs if s.name):
        names = [s.name for s in specs if s.name]
        dup = next(n for n in names if names.count(n) > 1)
        raise ConfigError(f"sources: the name '{dup}' is given twice (outputs are named after it)")
    out = []
    for s in specs:
        if s.name:
            out.append(s)
            continue
        base = _url_name(s.spec) if several and is_stream_url(s.spec) else source_name(s.spec)
        name, k = base, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name)
        out.append(replace(s, name=name))
    return out


_KEYS = {"name", "source", "path", "url", "output", "events", "max_frames", "paced"}


def load_sources(path: Path) -> list[SourceSpec]:
    """Read a sources file (see the module docstring).

    Raises:
        ConfigError: Unreadable file, not YAML, or an item that is not a source.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"sources file '{path}' could not be read: {err.strerror or err}") from err
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"sources file '{path}' is not valid YAML: {str(err).splitlines()[0]}") from err
    if isinstance(data, dict) and set(data) == {"sources"}:
        data = data["sources"]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"sources file '{path}': expected a list of sources (or 'sources:' with one)")
    return [_item(item, i, path) for i, item in enumerate(data, 1)]


def _item(item: Any, i: int, path: Path) -> SourceSpec:
    where = f"sources file '{path}': source {i}"
    base = Path(path).resolve().parent
    if isinstance(item, (str, int)) and not isinstance(item, bool):
        spec = str(item)
        local = not spec.isdigit() and not is_stream_url(spec) and not Path(spec).is_absolute()
        return SourceSpec(str(base / spec) if local else spec)
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a path, URL or mapping, got {type(item).__name__}")
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(_KEYS))})")
    given = [k for k in ("source", "path", "url") if item.get(k) is not None]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of source, path, url")
    max_frames = item.get("max_frames")
    if max_frames is not None and (not isinstance(max_frames, int) or isinstance(max_frames, bool) or max_frames <= 0):
        raise ConfigError(f"{where}: max_frames must be a positive integer, got {max_frames!r}")
    files = {k: base / item[k] if not Path(item[k]).is_absolute() else Path(item[k])
             for k in ("output", "events") if item.get(k)}
    spec = str(item[given[0]])
    if given[0] == "path" and not Path(spec).is_absolute():
        spec = str(base / spec)
    paced = item.get("paced", False)
    if not isinstance(paced, bool):
        raise ConfigError(f"{where}: paced must be true or false, got {paced!r}")
    return SourceSpec(spec, name=str(item.get("name") or ""), output=files.get("output"),
                      events=files.get("events"), max_frames=max_frames, paced=paced)
