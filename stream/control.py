"""The sources of a running pipeline changed by name: added, removed, and re-read from a sources file.

:class:`SourceControl` is the one place that changes the sources of a running
:class:`~stream.pipeline.Pipeline` for a person: ``emostream serve``'s ``POST`` and
``DELETE /api/sources``, the dashboard's reload, and SIGHUP in ``run`` and ``serve``.
It is also a pipeline sink, so it knows which sources run and how each one ended.

A reload re-reads the sources file and compares it with the sources that came from
that file (at start or at an earlier reload), by name (``name:``, else the name the
file alone gives the entry, as at start):

- an entry whose source is not running is added (a source that was removed or failed
  is added again; a file that was played to its end is not played again);
- a source no longer in the file is removed (its outputs are finalised);
- every other source is left alone, even if its entry changed (rename it to replace it).

Sources given on the command line or added through the API are never touched by a
reload. A file that cannot be read or holds a source that cannot be opened changes
nothing: one warning line is logged and :class:`ReloadError` raised. A name used by an
ended source is not reused for a new one (its outputs would be overwritten): the new
source gets ``name-2`` (``-3`` ...), and a reload still matches it by the file's name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream.capture.live import is_stream_url
from stream.capture.spec import SourceSpec, check_name, load_sources, unique_names
from stream.contract import printable
from stream.errors import ConfigError, StreamError
from stream.redact import redact_url
from stream.summary import RunSummary
from stream.userfile import excerpt

if TYPE_CHECKING:
    from stream.pipeline import Pipeline

__all__ = ["NameInUse", "NoSourcesFile", "NotRunning", "ReloadError", "ReloadResult", "SourceControl", "UnknownSource",
           "check_openable", "file_keys", "free_name", "reload_plan", "spec_from_json"]

log = logging.getLogger(__name__)

RUNNING, ENDED, FAILED, REMOVED = "running", "ended", "failed", "removed"
_HAS = {ENDED: "has ended", FAILED: "has failed", REMOVED: "was removed"}
_JSON_KEYS = ("source", "name", "paced")


class UnknownSource(ConfigError):
    """No source has that id."""


class NotRunning(ConfigError):
    """The source has ended already (played to its end, failed or removed)."""


class NameInUse(ConfigError):
    """A running source has that name."""


class NoSourcesFile(ConfigError):
    """The run has no sources file to reload."""


class ReloadError(ConfigError):
    """The sources file could not be reloaded; nothing was changed."""


@dataclass
class _Entry:
    summary: RunSummary
    state: str = RUNNING
    key: str | None = None  # its name in the sources file, when it came from there


@dataclass
class ReloadResult:
    """What a reload did: the names (in the run) of the sources added, removed and left alone."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def line(self, path: Path) -> str:
        """One line for a person."""
        return (f"sources file '{printable(str(path))}' reloaded: added {', '.join(self.added) or 'none'}; "
                f"removed {', '.join(self.removed) or 'none'}; {len(self.unchanged)} unchanged")


def file_keys(file_specs: Sequence[SourceSpec], first_id: int) -> dict[int, str]:
    """``{source_id: name a reload matches it by}`` of the sources a run took from its sources file.

    Args:
        file_specs: The file's sources as read (:func:`~stream.capture.spec.load_sources`).
        first_id: The ``source_id`` of the first of them (the command line's sources come first).
    """
    return {first_id + i: s.name for i, s in enumerate(unique_names(file_specs))}


def reload_plan(wanted: Sequence[tuple[str, SourceSpec]], states: Iterable[tuple[str, str]]
                ) -> tuple[list[tuple[str, SourceSpec]], list[str]]:
    """What a reload changes (see the module docstring): the file's entries to add, the keys to remove.

    Args:
        wanted: The sources file's entries as ``(key, spec)`` (:meth:`SourceControl.file_entries`).
        states: ``(key, state)`` of every source that came from the file, ended ones included
            (``running``, ``ended``, ``failed`` or ``removed``); a key may come more than once
            (a removed source added again).
    """
    rank = {RUNNING: 3, ENDED: 2}
    current: dict[str, str] = {}
    for key, state in states:
        if rank.get(state, 1) > rank.get(current.get(key, ""), 0):
            current[key] = state
    keys = {key for key, _ in wanted}
    new = [(key, spec) for key, spec in wanted if current.get(key) not in (RUNNING, ENDED)]
    return new, [key for key, state in current.items() if state == RUNNING and key not in keys]


def check_openable(specs: Iterable[SourceSpec], where: str) -> None:
    """Refuse a reload whose new sources name a file that is not there (the common mistake), before any change.

    Raises:
        ReloadError: One of them is a path to nothing.
    """
    for spec in specs:
        if not spec.spec.isdigit() and not is_stream_url(spec.spec) and not os.path.exists(spec.spec):
            raise ReloadError(f"{where} (the sources are left as they were): source '{printable(spec.spec)}' "
                              "could not be opened: no such file")


def spec_from_json(data: Any, *, paced: bool = False) -> SourceSpec:
    """A source from the JSON body of ``POST /api/sources``: ``{"source": ..., "name": ..., "paced": ...}``.

    Args:
        data: The parsed body.
        paced: The default of ``paced`` (``serve`` plays video files as live cameras).

    Raises:
        ConfigError: Not an object, an unknown key, or a value of the wrong kind.
    """
    if not isinstance(data, dict):
        raise ConfigError('expected a JSON object like {"source": "rtsp://cam/1", "name": "door", "paced": true}')
    unknown = sorted(str(k) for k in data if k not in _JSON_KEYS)
    if unknown:
        raise ConfigError(f"unknown key {excerpt(unknown[0])} (known: {', '.join(_JSON_KEYS)})")
    source = data.get("source")
    if isinstance(source, int) and not isinstance(source, bool) and source >= 0:
        source = str(source)  # a webcam index
    if not isinstance(source, str) or not source.strip() or "\0" in source:
        raise ConfigError(f"'source' must be a path, a stream URL or a webcam index, got {excerpt(source)}")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"'name' must be a string, got {excerpt(name)}")
    if name:
        check_name(name, "source")
    given = data.get("paced", paced)
    if not isinstance(given, bool):
        raise ConfigError(f"'paced' must be true or false, got {excerpt(given)}")
    return SourceSpec(source.strip(), name=name or "", paced=given)


class SourceControl:
    """Add, remove and reload the sources of a running pipeline (see the module docstring).

    Give it to the pipeline as a sink, then :meth:`attach` the pipeline. Its methods
    are called from any thread but the pipeline's consuming one (they wait for it).

    Args:
        sources_file: The ``--sources`` file a reload re-reads (None: no reload).
        paced: Sources from the file are played as live cameras (``serve`` without ``--no-pace``).
    """

    wants_images = False

    def __init__(self, sources_file: Path | None = None, *, paced: bool = False) -> None:
        self.sources_file = sources_file
        self.paced = paced
        self.pipeline: Pipeline | None = None
        self.started = threading.Event()
        self._entries: dict[int, _Entry] = {}
        self._keys: dict[int, str] = {}  # keys of the first sources, known before they start
        self._lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._closed = False

    def attach(self, pipeline: Pipeline, file_keys: Mapping[int, str] | None = None) -> None:
        """The pipeline to change, and which of its first sources came from the sources file.

        Args:
            pipeline: The pipeline (this control among its sinks).
            file_keys: ``{source_id: its name in the sources file}`` (see :meth:`file_entries`).
        """
        self.pipeline = pipeline
        self._keys = dict(file_keys or {})

    def close(self) -> None:
        """The pipeline has ended: later calls are refused."""
        self._closed = True

    def file_entries(self) -> list[tuple[str, SourceSpec]]:
        """The sources file's entries with the name a reload matches them by (as played: paced if asked).

        Raises:
            NoSourcesFile: No sources file.
            ConfigError: It cannot be read.
        """
        if self.sources_file is None:
            raise NoSourcesFile("no sources file to reload: start with --sources FILE.yaml")
        specs = unique_names(load_sources(self.sources_file))
        if self.paced:
            specs = [replace(s, paced=True) for s in specs]
        return [(s.name, s) for s in specs]

    # -- Sink (the pipeline's consuming thread) ------------------------------------------------

    def on_start(self, summaries: list[RunSummary]) -> None:
        with self._lock:
            for s in summaries:
                self._entries[s.source_id] = _Entry(s, key=self._keys.get(s.source_id))
        self.started.set()

    def on_source_added(self, summary: RunSummary) -> None:
        with self._lock:
            self._entries[summary.source_id] = _Entry(summary)

    def on_result(self, result: object, summary: RunSummary) -> None:
        pass

    def on_source_end(self, summary: RunSummary) -> None:
        with self._lock:
            entry = self._entries.setdefault(summary.source_id, _Entry(summary))
            entry.state = FAILED if summary.error is not None else (
                REMOVED if summary.warning == "removed" else ENDED)

    # -- Changes (any other thread) ----------------------------------------------------------------

    def info(self, source_id: int) -> dict[str, Any]:
        """Id, name, source (credentials hidden) and state of one source."""
        with self._lock:
            entry = self._entries.get(source_id)
        if entry is None:
            raise UnknownSource(f"no source {source_id}")
        s = entry.summary
        return {"id": s.source_id, "name": s.name, "source": redact_url(s.source), "state": entry.state}

    def add(self, spec: SourceSpec, *, key: str | None = None) -> dict[str, Any]:
        """Add a source to the running pipeline; returns its :meth:`info`.

        A camera that is down is added and retried on its own thread; a file that cannot be
        opened is refused.

        Raises:
            NameInUse: A running source has the name asked for.
            StreamError: It cannot be opened, its outputs cannot be written, too many sources,
                or the pipeline has ended.
        """
        pipeline = self._pipeline()
        with self._lock:
            names = {e.summary.name: e.state for e in self._entries.values()}
        if spec.name:
            if names.get(spec.name) == RUNNING:
                raise NameInUse(f"a running source is named '{spec.name}': remove it first, or give another name")
            if spec.name in names:  # an ended source's outputs keep their name
                spec = replace(spec, name=free_name(spec.name, names))
        source_id = pipeline.add_source(spec)
        with self._lock:
            entry = self._entries.setdefault(source_id, _Entry(pipeline.summaries[source_id]))
            entry.key = key
        return self.info(source_id)

    def remove(self, source_id: int) -> dict[str, Any]:
        """Stop one source: its outputs are finalised, the others go on; returns its :meth:`info`.

        Raises:
            UnknownSource: No such source.
            NotRunning: It has ended already.
        """
        pipeline = self._pipeline()
        with self._lock:
            entry = self._entries.get(source_id)
        if entry is None:
            raise UnknownSource(f"no source {source_id}")
        if entry.state != RUNNING:
            raise NotRunning(f"source {source_id} ({entry.summary.name}) {_HAS[entry.state]} already")
        try:
            pipeline.remove_source(source_id)
        except ConfigError as err:
            if entry.state != RUNNING:  # it ended while asked
                raise NotRunning(f"source {source_id} ({entry.summary.name}) {_HAS[entry.state]} already") from None
            raise err
        return self.info(source_id)

    def reload(self) -> ReloadResult:
        """Re-read the sources file and add and remove sources to match it (see the module docstring).

        Raises:
            NoSourcesFile: No sources file.
            ReloadError: The file or one of its new sources is bad: nothing changed (logged once).
        """
        if self.sources_file is None:
            raise NoSourcesFile("no sources file to reload: start with --sources FILE.yaml")
        self._pipeline()
        with self._reload_lock:
            try:
                return self._reload()
            except ReloadError as err:
                log.warning("%s", err)
                raise

    def _reload(self) -> ReloadResult:
        assert self.sources_file is not None
        where = f"sources file '{printable(str(self.sources_file))}' not reloaded"
        try:
            wanted = self.file_entries()
        except StreamError as err:
            raise ReloadError(f"{where} (the sources are left as they were): {err}") from None
        with self._lock:
            from_file = [(e.key, e) for e in self._entries.values() if e.key is not None]
        running = {key: e for key, e in from_file if e.state == RUNNING}
        new, gone = reload_plan(wanted, [(key, e.state) for key, e in from_file])
        check_openable([spec for _, spec in new], where)
        result = ReloadResult(unchanged=[e.summary.name for key, e in running.items() if key not in gone])
        added: list[int] = []
        try:
            for key, spec in new:
                info = self.add(replace(spec, name=key), key=key)
                added.append(info["id"])
                result.added.append(info["name"])
        except StreamError as err:
            for source_id in added:  # put things back as they were
                with contextlib.suppress(StreamError):
                    self.remove(source_id)
            raise ReloadError(f"{where} (the sources are left as they were): {err}") from None
        for key in gone:
            entry = running[key]
            try:
                self.remove(entry.summary.source_id)
            except NotRunning:
                continue  # it ended meanwhile
            result.removed.append(entry.summary.name)
        return result

    def _pipeline(self) -> Pipeline:
        if self.pipeline is None or self._closed or not self.started.is_set():
            raise ConfigError("the pipeline is not running")
        return self.pipeline


def free_name(name: str, taken: Mapping[str, object] | Sequence[str] | set[str]) -> str:
    """``name-2`` (``-3`` ...): the first not in ``taken`` (an ended source's outputs keep their name)."""
    k = 2
    while f"{name}-{k}" in taken:
        k += 1
    return f"{name}-{k}"
