"""Reading the files a user names (config, sources lists, event logs, input lists): one guarded way.

Every such file is refused with one line (a :class:`~stream.errors.StreamError`
subclass chosen by the caller) unless it is

- a **regular file**: a FIFO would block the reader forever, ``/dev/zero`` never
  ends, a directory is not a file (checked before opening and again on the open
  descriptor, which is opened non-blocking so a FIFO cannot hang the open);
- **no larger than a limit**, and read with that bound (a file that grows while
  it is read is still cut at the limit);
- **UTF-8 text** (when read as text).

YAML goes through :func:`load_yaml`: PyYAML's safe loader, plus a bound on
nesting (a file nested 20,000 deep is refused instead of a ``RecursionError``)
and on the size of the document *with its aliases expanded* (a few hundred
bytes of ``&a [*b, *b, ...]`` anchors expand to billions of nodes: it is
refused without expanding it). Messages quote a user's value only through
:func:`excerpt`: short, one line, escape codes shown as escapes.
"""

from __future__ import annotations

import os
import reprlib
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml

from stream.errors import ConfigError, StreamError

__all__ = [
    "MAX_YAML_DEPTH",
    "MAX_YAML_NODES",
    "excerpt",
    "file_kind",
    "load_yaml",
    "open_user_file",
    "read_user_text",
    "read_user_yaml",
]

#: Deepest nesting of mappings/lists a YAML file may have (config.yaml needs 3).
MAX_YAML_DEPTH = 64
#: Most YAML nodes a document may hold once its aliases are expanded.
MAX_YAML_NODES = 200_000

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 2


def excerpt(value: Any, limit: int = 60) -> str:
    """A short, one-line, printable ``repr`` of a user's value, for error messages.

    Never builds the whole ``repr`` of a large or deeply shared structure.
    """
    from stream.contract import printable

    text = printable(_REPR.repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages: ``a FIFO (named pipe)``, ``a character device`` ..."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _size_text(n: int) -> str:
    return f"{n // (1 << 20)} MB" if n >= 1 << 20 else f"{n // 1024} KB"


@contextmanager
def open_user_file(path: Path | str, what: str, *, max_bytes: int,
                   error: type[StreamError] = ConfigError) -> Iterator[IO[bytes]]:
    """Open a user's file for reading, binary, after the checks in the module docstring.

    Reading more than ``max_bytes`` from the returned file is the caller's to avoid
    (:func:`read_user_text` does); the size is checked at open.

    Args:
        path: The file.
        what: How messages name it (``"config"``, ``"sources file"``, ``"event log"``).
        max_bytes: Largest size accepted.
        error: The exception raised.

    Raises:
        StreamError: ``error``: missing, unreadable, not a regular file, or too large.
    """
    from stream.contract import printable

    shown = printable(str(path))
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what} '{shown}' could not be read: it is {file_kind(mode)}, not a file")
        # O_NONBLOCK: if the name became a FIFO since the stat, the open still returns at once.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{what} '{shown}' could not be read: no such file") from None
    except ValueError:  # a NUL byte in the name
        raise error(f"{what} '{shown}' could not be read: the name holds a NUL byte") from None
    except OSError as err:
        raise error(f"{what} '{shown}' could not be read: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} '{shown}' could not be read: it is {file_kind(st.st_mode)}, not a file")
        if st.st_size > max_bytes:
            raise error(f"{what} '{shown}' is larger than {_size_text(max_bytes)} ({_size_text(st.st_size)}): "
                        f"not a {what}")
        os.set_blocking(fd, True)
        fh = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with fh:
        yield fh


def read_user_text(path: Path | str, what: str, *, max_bytes: int, error: type[StreamError] = ConfigError) -> str:
    """The whole of a user's text file, checked and read with a bound (see :func:`open_user_file`).

    Raises:
        StreamError: ``error``: see :func:`open_user_file`; also a file that is not UTF-8 text.
    """
    from stream.contract import printable

    with open_user_file(path, what, max_bytes=max_bytes, error=error) as fh:
        try:
            data = fh.read(max_bytes + 1)
        except OSError as err:
            raise error(f"{what} '{printable(str(path))}' could not be read: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise error(f"{what} '{printable(str(path))}' is larger than {_size_text(max_bytes)}: not a {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} '{printable(str(path))}' is not a text (UTF-8) file: byte {err.start} is "
                    "invalid") from None


class _TooBig(yaml.YAMLError):
    """Raised inside the loader: the document is nested too deeply or expands too far."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses deep nesting while composing, and documents whose
    aliases expand beyond :data:`MAX_YAML_NODES` nodes before constructing anything."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _TooBig(f"nested deeper than {MAX_YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None:
            _check_expanded_size(node)
        return node


def _check_expanded_size(root: yaml.Node) -> None:
    """Count the nodes of ``root`` as if every alias were a copy, memoised per node (linear in the file)."""
    sizes: dict[int, int] = {}
    # Iterative post-order walk: nesting is already bounded, but no recursion is cheaper still.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        total = 1 + sum(sizes.get(id(c), 0) for c in children)
        if total > MAX_YAML_NODES:
            raise _TooBig(f"its aliases expand to more than {MAX_YAML_NODES:,} values (an alias bomb?)")
        sizes[id(node)] = total


def load_yaml(text: str, where: str, error: type[StreamError] = ConfigError) -> Any:
    """Parse one YAML document safely (plain data only, bounded nesting and alias expansion).

    Args:
        text: The document.
        where: How messages name it (``"config 'c.yaml'"``).
        error: The exception raised.

    Raises:
        StreamError: ``error``: not YAML, nested too deeply, or expanding too far.
    """
    try:
        loader = _BoundedLoader(text)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except _TooBig as err:
        raise error(f"{where} is not accepted: {err}") from None
    except yaml.YAMLError as err:
        from stream.contract import printable

        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise error(f"{where} is not valid YAML: {printable(first)[:200]}") from None
    except RecursionError:
        raise error(f"{where} is not accepted: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:  # e.g. an integer of more than 4300 digits
        raise error(f"{where} is not valid YAML: {excerpt(str(err), 120)}") from None


def read_user_yaml(path: Path | str, what: str, *, max_bytes: int, error: type[StreamError] = ConfigError) -> Any:
    """:func:`read_user_text` then :func:`load_yaml`."""
    from stream.contract import printable

    text = read_user_text(path, what, max_bytes=max_bytes, error=error)
    return load_yaml(text, f"{what} '{printable(str(path))}'", error)
