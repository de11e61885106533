"""``python -m stream`` with a count of the frames each live source skipped as stale, for the fleet soak.

The capture skips RTSP frames that come out of a backlog, behind the live edge, undecoded
(``LiveSource.stale_skipped``, see ``stream/capture/live.py``); no metric or log line reports them.
``benchmarks/soak_fleet.py`` runs ``emostream serve`` through this module so the frames the cameras
sent can be accounted for: every 2 s and at exit it writes
``{source name: {"stale_skipped": N, "frames_read": N, "reconnects": N, ...}}`` to ``$EMOSTREAM_SOAK_COUNTS``
(atomically: a temporary file renamed). Nothing else changes.

The test cameras (``tests/rtsp_server.py``) draw a stamp in every frame: a sequence number and the
send time. Each frame a source returns is read for it (:func:`tests.rtsp_server.read_stamp`, a few rows
of pixels), per connection (a camera restarted counts from 0 again):

- ``sent_by_seq``: the frames the camera sent while connected, by its numbers (last - first + 1);
- ``seq_missing``: the numbers the reader never returned (the stale frames it skipped are among them);
- ``send_span_s``: the span of the send times, to compare with ``sent_by_seq`` at the nominal rate
  (a camera process that stalls for more than 1 s stops sending instead of bursting);
- ``unstamped``: frames whose stamp could not be read.

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
from tests.rtsp_server import read_stamp  # noqa: E402

_sources: weakref.WeakSet = weakref.WeakSet()
_last: dict[str, dict[str, int]] = {}
_lock = threading.Lock()
_init = live.LiveSource.__init__
_read = live.LiveSource.read


class _Stamps:
    """What the stamps of one source's frames say (see the module docstring)."""

    def __init__(self) -> None:
        self.sent_by_seq = self.seq_missing = self.unstamped = 0
        self.send_span_s = 0.0
        self.first: tuple[int, int] | None = None  # (t_ms, seq) of this connection's first frame
        self.last: tuple[int, int] | None = None
        self.reconnects = 0

    def add(self, image, reconnects: int) -> None:  # type: ignore[no-untyped-def]
        stamp = read_stamp(image)
        if stamp is None:
            self.unstamped += 1
            return
        if self.last is not None and (reconnects != self.reconnects or stamp[1] <= self.last[1]):
            self.close()
        self.reconnects = reconnects
        if self.last is not None:
            self.seq_missing += stamp[1] - self.last[1] - 1
        else:
            self.first = stamp
        self.last = stamp

    def close(self) -> None:
        if self.first is not None and self.last is not None:
            self.sent_by_seq += self.last[1] - self.first[1] + 1
            self.send_span_s += (self.last[0] - self.first[0]) / 1000.0
        self.first = self.last = None

    def totals(self) -> dict[str, float]:
        sent, span = self.sent_by_seq, self.send_span_s
        if self.first is not None and self.last is not None:
            sent += self.last[1] - self.first[1] + 1
            span += (self.last[0] - self.first[0]) / 1000.0
        return {"sent_by_seq": sent, "seq_missing": self.seq_missing, "send_span_s": round(span, 3),
                "unstamped": self.unstamped}


def _register(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
    _init(self, *args, **kwargs)
    self._soak_stamps = _Stamps()
    _sources.add(self)


def _read_stamped(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    item = _read(self, *args, **kwargs)
    stamps = getattr(self, "_soak_stamps", None)
    if item is not None and stamps is not None:
        stamps.add(item[0], self.reconnects)
    return item


def dump(path: str) -> None:
    """Write the counts of every live source seen so far (the last values of those gone)."""
    with _lock:
        for source in list(_sources):
            _last[source.name] = {"stale_skipped": source.stale_skipped, "frames_read": source.frames_read,
                                  "reconnects": source.reconnects, **source._soak_stamps.totals()}
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(_last, f)
        os.replace(tmp, path)


def main() -> None:
    path = os.environ.get("EMOSTREAM_SOAK_COUNTS")
    if path:
        live.LiveSource.__init__ = _register  # type: ignore[method-assign]
        live.LiveSource.read = _read_stamped  # type: ignore[method-assign]
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
