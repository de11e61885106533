"""Output files that never destroy what was there before: temporary name, lock, rename.

Every output (annotated video, image, event log) is written to a *partial*
file next to its final name, ``NAME.partial.EXT`` (the extension stays, so
players and codecs recognise it), and renamed over the final name only when
the run ends well (also after Ctrl-C/SIGTERM, whose outputs are finalised):

- a run that fails (exit 2) leaves an earlier file with the final name as it was;
- a half-written file never carries the final name;
- the partial file is locked (``fcntl.flock``) while a run writes it, so a
  second run aimed at the same output is refused instead of interleaving
  frames with the first;
- after SIGKILL or a power cut the partial file stays, readable up to its last
  flushed part (the video is fragmented MP4). The next run to the same output
  keeps it: it renames it to ``NAME.recovered-<time>.EXT`` before starting.

A FIFO or a character device (``/dev/stdout``) named as the event log is
written directly: there is nothing to rename.

Outputs written whole (a report's HTML and PNGs, episode lists, a batch job's
dataset and job files) go the same way through :func:`write_output`, and outputs
that belong together through an :class:`OutputGroup`: every target is checked
and locked before the first byte is written, and all are renamed at the end.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from pathlib import Path

from stream.config import file_kind
from stream.errors import OutputError

__all__ = ["VIDEO_SUFFIXES", "OutputFile", "OutputGroup", "check_output_paths", "partial_path", "same_file",
           "write_output"]

log = logging.getLogger(__name__)


def partial_path(path: Path) -> Path:
    """The temporary name ``path`` is written under: ``clip.mp4`` -> ``clip.partial.mp4``."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def same_file(a: Path | str, b: Path | str) -> bool:
    """True when ``a`` and ``b`` name the same file (same inode when both exist, else same absolute path)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


#: Containers of the annotated video: a video source must not be written as a still image.
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".ts"})


def check_output_paths(source: Path | str | None, video: Path | None, events: Path | None, *,
                       image_mode: bool) -> None:
    """Refuse outputs that would destroy the source or each other, before anything is opened.

    Args:
        source: The source file (None for a camera or stream).
        video: The annotated video or image, or None.
        events: The event log, or None.
        image_mode: The source is a still image (its output is an image, else a video).

    Raises:
        OutputError: An output is the source, the two outputs are one file, or a video
            source would be written under an image name.
    """
    named = [(what, path) for what, path in (("output video", video), ("event log", events)) if path is not None]
    for what, path in named:
        if source is not None and same_file(path, source):
            raise OutputError(f"{what} '{path}' is the source itself: writing it would destroy the input")
    if video is not None and events is not None and same_file(video, events):
        raise OutputError(f"event log '{events}' is the same file as the output video: give them different names")
    if video is not None and not image_mode and video.suffix.lower() not in VIDEO_SUFFIXES and not (
            video.exists() and not video.is_file()):  # a folder or device: OutputFile says so, more to the point
        raise OutputError(f"output video '{video}': the source is a video, so the output must be a video file "
                          f"({', '.join(sorted(VIDEO_SUFFIXES))}), not '{video.suffix or 'no extension'}'")


class OutputFile:
    """One output's final name, its locked partial file, and the rename that publishes it.

    Args:
        path: The final name.
        what: ``"output video"``, ``"event log"`` ... for messages.
        allow_stream: Accept a FIFO or character device as ``path`` and write it directly.

    Attributes:
        path: The final name.
        write_path: Where the writer must write (the partial file, or ``path`` itself when direct).
        direct: True when ``path`` is a FIFO or device written in place.

    Raises:
        OutputError: ``path`` is a directory or special file, its folder cannot be created or
            written, or another emostream run is writing it.
    """

    def __init__(self, path: Path | str, what: str, *, allow_stream: bool = False) -> None:
        self.path = Path(path)
        self.what = what
        self.direct = False
        self._fd: int | None = None
        try:
            mode: int | None = os.stat(self.path).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):
            if allow_stream and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
                self.direct = True
                self.write_path = self.path
                return
            raise OutputError(f"{what} '{path}' could not be written: it is {file_kind(mode)}, not a file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{what} '{path}' could not be written: {err.strerror or err}") from err
        if mode is not None and not os.access(self.path, os.W_OK):
            # A read-only earlier file is the user's way to protect it: do not rename over it.
            raise OutputError(f"{what} '{path}' could not be written: permission denied")
        self.write_path = partial_path(self.path)
        self._fd = self._lock()

    def _lock(self) -> int:
        for _ in range(3):
            try:
                fd = os.open(self.write_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as err:
                raise OutputError(f"{self.what} '{self.path}' could not be written: {err.strerror or err}") from err
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise OutputError(f"{self.what} '{self.path}' is being written by another emostream run "
                                      f"(its partial file '{self.write_path}' is locked)") from None
                raise OutputError(f"{self.what} '{self.path}' could not be locked: {err.strerror or err}") from err
            if os.fstat(fd).st_size == 0:
                return fd
            # Left by a run that was killed: keep it (it plays up to its last fragment), start afresh.
            kept = self._recovered_name()
            try:
                os.rename(self.write_path, kept)
            except OSError as err:
                os.close(fd)
                raise OutputError(f"{self.what} '{self.path}': the leftover '{self.write_path}' of an earlier "
                                  f"run could not be moved aside: {err.strerror or err}") from err
            os.close(fd)
            log.warning("%s: kept the partial file an earlier, killed run left as '%s'", self.what, kept)
        raise OutputError(f"{self.what} '{self.path}' could not be written: its partial file keeps reappearing")

    def _recovered_name(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.stat(self.write_path).st_mtime))
        for n in range(1000):
            tag = f"recovered-{stamp}" + (f"-{n}" if n else "")
            candidate = self.path.with_name(f"{self.path.stem}.{tag}{self.path.suffix}")
            if not os.path.lexists(candidate):
                return candidate
        raise OutputError(f"{self.what} '{self.path}': too many recovered files beside it")

    def commit(self) -> None:
        """Publish: flush the partial file to disk and rename it over the final name. Idempotent.

        Raises:
            OutputError: The data could not be flushed or the rename failed (the partial file stays).
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.fsync(fd)  # the same inode the writer wrote: its data is on disk before the name moves
            os.replace(self.write_path, self.path)
        except OSError as err:
            raise OutputError(f"{self.what} '{self.path}' could not be written: {err.strerror or err} "
                              f"(what was written is in '{self.write_path}')") from err
        finally:
            os.close(fd)  # releases the lock
        _fsync_dir(self.path.parent)

    def discard(self, *, keep: bool) -> None:
        """Give up without touching the final name. Idempotent.

        Args:
            keep: Leave the partial file (it holds frames worth keeping); else delete it.
        """
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if not keep and os.path.lexists(self.write_path) and os.path.samestat(
                    os.fstat(fd), os.stat(self.write_path)):
                os.unlink(self.write_path)
        except OSError as err:
            log.debug("could not remove %s: %s", self.write_path, err)
        finally:
            os.close(fd)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a folder; the rename itself is done
    finally:
        os.close(fd)


def _write_whole(target: OutputFile, data: bytes | str) -> None:
    """Write ``data`` into ``target``'s partial file (the caller commits or discards)."""
    try:
        with open(target.write_path, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    except OSError as err:
        raise OutputError(f"{target.what} '{target.path}' could not be written: {err.strerror or err}") from err


def write_output(path: Path | str, data: bytes | str, what: str) -> Path:
    """Write a whole output at once: its partial file, flushed, then renamed over ``path``.

    A failure (full disk, a folder in the way, another run writing it) leaves an earlier
    file named ``path`` as it was and removes the partial file.

    Args:
        path: The final name.
        data: The content (``str`` is written as UTF-8).
        what: How messages name it.

    Returns:
        ``path``.

    Raises:
        OutputError: It could not be written.
    """
    target = OutputFile(path, what)
    try:
        _write_whole(target, data)
        target.commit()
    finally:
        target.discard(keep=False)  # no-op after a commit
    return target.path


class OutputGroup:
    """Outputs published together (a report's HTML, PNGs and episodes).

    :meth:`add` every output first: each is checked and its partial file locked, so a
    folder in the way or a second run is refused before anything is written. Write
    each (:meth:`write`, or into :attr:`OutputFile.write_path`), then :meth:`commit`
    renames them all. Leaving the ``with`` block without a commit discards every
    partial file: earlier files with the final names stay as they were.
    """

    def __init__(self) -> None:
        self.files: dict[Path, OutputFile] = {}

    def add(self, path: Path | str, what: str) -> OutputFile:
        """Check and lock one more output (before anything is written).

        Raises:
            OutputError: It cannot be written (see :class:`OutputFile`).
        """
        path = Path(path)
        if path not in self.files:
            self.files[path] = OutputFile(path, what)
        return self.files[path]

    def write(self, path: Path | str, data: bytes | str) -> None:
        """Write the whole content of an added output into its partial file.

        Raises:
            OutputError: The data could not be written.
        """
        _write_whole(self.files[Path(path)], data)

    def commit(self) -> None:
        """Publish every output (flush, rename over the final names).

        Raises:
            OutputError: A rename failed (the outputs not yet renamed are discarded).
        """
        for target in self.files.values():
            target.commit()

    def discard(self) -> None:
        """Remove every partial file not published (idempotent)."""
        for target in self.files.values():
            target.discard(keep=False)

    def __enter__(self) -> OutputGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()
