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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from stream.capture.live import is_stream_url
from stream.contract import printable
from stream.errors import ConfigError
from stream.userfile import excerpt, read_user_yaml

__all__ = ["MAX_NAME_CHARS", "SourceSpec", "check_name", "load_sources", "source_name", "unique_names"]


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
        source: A :class:`~stream.capture.FrameSource` object to read instead of opening ``spec``
            (which then only names it); given unopened, the pipeline opens and closes it.
    """

    spec: str
    name: str = ""
    output: Path | None = None
    events: Path | None = None
    max_frames: int | None = None
    paced: bool = False
    source: Any = field(default=None, compare=False, repr=False)


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
    for s in specs:
        if s.name:
            check_name(s.name, f"source '{printable(s.name[:60])}'")
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
#: A sources file larger than this is not a list of sources.
MAX_SOURCES_FILE_BYTES = 1 << 20
#: Longest source name: it becomes part of file names.
MAX_NAME_CHARS = 100


def load_sources(path: Path) -> list[SourceSpec]:
    """Read a sources file (see the module docstring).

    The file is read like every user file (:mod:`stream.userfile`: a regular file, at most
    :data:`MAX_SOURCES_FILE_BYTES`, YAML with bounded nesting and aliases), and every value is
    checked, the message naming the source and the key.

    Raises:
        ConfigError: Unreadable file, not YAML, or an item that is not a source.
    """
    data = read_user_yaml(path, "sources file", max_bytes=MAX_SOURCES_FILE_BYTES)
    if isinstance(data, dict) and set(data) == {"sources"}:
        data = data["sources"]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"sources file '{printable(str(path))}': expected a list of sources "
                          "(or 'sources:' with one)")
    return [_item(item, i, path) for i, item in enumerate(data, 1)]


def check_name(name: str, where: str) -> str:
    """Refuse a source name that cannot be a file name's start: outputs are ``<out-dir>/<name>.*``.

    Raises:
        ConfigError: Empty, too long, a path separator (``../../x`` would leave the output
            folder), a NUL or another control character.
    """
    if not name or len(name) > MAX_NAME_CHARS or "/" in name or "\\" in name or not name.isprintable() \
            or name in (".", ".."):
        raise ConfigError(f"{where}: 'name' must be a plain file name (no '/' or '\\', no control characters, "
                          f"1 to {MAX_NAME_CHARS} characters), got {excerpt(name)}")
    return name


def _path_value(item: dict[Any, Any], key: str, where: str) -> str | None:
    value = item.get(key)
    if value is None:
        return None
    allowed = (str, int) if key == "source" else (str,)  # an integer source is a webcam index
    if isinstance(value, bool) or not isinstance(value, allowed) or value == "":
        raise ConfigError(f"{where}: '{key}' must be a path{' or URL' if key in ('source', 'url') else ''}, "
                          f"got {excerpt(value)} ({type(value).__name__})")
    text = str(value)
    if "\0" in text:
        raise ConfigError(f"{where}: '{key}' holds a NUL byte")
    return text


def _item(item: Any, i: int, path: Path) -> SourceSpec:
    where = f"sources file '{printable(str(path))}': source {i}"
    base = Path(path).resolve().parent
    if isinstance(item, (str, int)) and not isinstance(item, bool):
        spec = str(item)
        if not spec or "\0" in spec:
            raise ConfigError(f"{where}: expected a path, URL or webcam index, got {excerpt(item)}")
        local = not spec.isdigit() and not is_stream_url(spec) and not Path(spec).is_absolute()
        return SourceSpec(str(base / spec) if local else spec)
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a path, URL or mapping, got {type(item).__name__}")
    unknown = sorted(k if isinstance(k, str) else excerpt(k) for k in set(item) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {excerpt(unknown[0])} (known: {', '.join(sorted(_KEYS))})")
    given = {k: v for k in ("source", "path", "url") if (v := _path_value(item, k, where)) is not None}
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of source, path, url")
    max_frames = item.get("max_frames")
    if max_frames is not None and (not isinstance(max_frames, int) or isinstance(max_frames, bool) or max_frames <= 0):
        raise ConfigError(f"{where}: 'max_frames' must be a positive integer, got {excerpt(max_frames)}")
    files = {}
    for key in ("output", "events"):
        value = _path_value(item, key, where)
        if value is not None:
            files[key] = Path(value) if Path(value).is_absolute() else base / value
    kind, spec = next(iter(given.items()))
    if kind == "path" and not Path(spec).is_absolute():
        spec = str(base / spec)
    paced = item.get("paced", False)
    if not isinstance(paced, bool):
        raise ConfigError(f"{where}: 'paced' must be true or false, got {excerpt(paced)}")
    name = item.get("name")
    if isinstance(name, int) and not isinstance(name, bool):
        name = str(name)
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{where}: 'name' must be a string, got {excerpt(name)} ({type(name).__name__})")
    return SourceSpec(spec, name=check_name(name, where) if name else "", output=files.get("output"),
                      events=files.get("events"), max_frames=max_frames, paced=paced)
