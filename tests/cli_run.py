"""A long-running ``python -m stream ...`` in a test: stderr to a file, stopped with Ctrl-C, never left behind."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def running_cli(args: list[str], cwd: Path, stderr: Path) -> Iterator[subprocess.Popen]:
    """``python -m stream ARGS`` in ``cwd``, its stderr written to ``stderr``; killed on leaving if it still runs."""
    with stderr.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "stream", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=err)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def interrupt(proc: subprocess.Popen, stderr: Path, timeout_s: float) -> None:
    """Ctrl-C: the run must finish its outputs and exit 130 within ``timeout_s``."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout_s) == 130, stderr.read_text()
