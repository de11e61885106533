"""``python -m stream`` with a count of the frames each live source skipped as stale, for the fleet soak.

The capture skips RTSP frames that come out of a backlog, behind the live edge, undecoded
(``LiveSource.stale_skipped``, see ``stream/capture/live.py``); no metric or log line reports them.
``benchmarks/soak_fleet.py`` runs ``emostream serve`` through this module so the frames the cameras
sent can be accounted for: every 2 s and at exit it writes
``{source name: {"stale_skipped": N, "frames_read": N, "reconnects": N}}`` to ``$EMOSTREAM_SOAK_COUNTS``
(atomically: a temporary file renamed). Nothing else changes.

    EMOSTREAM_SOAK_COUNTS=counts.json python benchmarks/serve_counting.py serve rtsp://...
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import weakref
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from stream.capture import live  # noqa: E402

_sources: weakref.WeakSet = weakref.WeakSet()
_last: dict[str, dict[str, int]] = {}
_lock = threading.Lock()
_init = live.LiveSource.__init__


def _register(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    _init(self, *args, **kwargs)
    _sources.add(self)


def dump(path: str) -> None:
    """Write the counts of every live source seen so far (the last values of those gone)."""
    with _lock:
        for source in list(_sources):
            _last[source.name] = {"stale_skipped": source.stale_skipped, "frames_read": source.frames_read,
                                  "reconnects": source.reconnects}
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_last, f)
        os.replace(tmp, path)


def main() -> None:
    path = os.environ.get("EMOSTREAM_SOAK_COUNTS")
    if path:
        live.LiveSource.__init__ = _register  # type: ignore[method-assign]
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(2.0):
                dump(path)

        threading.Thread(target=loop, name="soak-counts", daemon=True).start()
        atexit.register(dump, path)
    from stream.commands import entry

    sys.argv = ["emostream", *sys.argv[1:]]
    sys.exit(entry())


if __name__ == "__main__":
    main()
