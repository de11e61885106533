"""A short soak: ``emostream run`` on a live RTSP camera for 90 s, killed once; memory and latency stay flat.

``benchmarks/soak.py`` does the work (a real GStreamer RTSP server, the CLI as a
subprocess, RSS from ``/proc``, latency from the event log). Why 90 s is enough
here: the run's RSS reaches its plateau within ~5 s of the first frame (measured
on the 2-core machine: 196 MB at 4 s, 198 MB at 60 s), so 60 s measured after a
20 s warm-up, about 800 frames, catches any leak of the order of a frame buffer
per frame (230 KB at 320x240) or a growing queue; slower leaks are the 1-hour
soak's job (``benchmarks/RESULTS.md``).

The bounds are loose on purpose, for a noisy shared 2-core machine: latency
here is a few ms, and a scheduler hiccup moves a window's p95 by tens of ms,
while a real drift (a backlog building up) shows as hundreds of ms.
"""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO
from tests.rtsp_fixtures import gstreamer_missing

sys.path.insert(0, str(REPO / "benchmarks"))

import soak

SECONDS = 90.0
WINDOW_S = 15.0
WARMUP_S = 20.0
MAX_GROWTH_MB = 30.0
#: The last window's p95 may be this many times the first's, or than this floor when the first is lower.
DRIFT_RATIO, DRIFT_FLOOR_MS = 3.0, 20.0
MAX_P95_MS = 500.0


@pytest.mark.slow
def test_soak_90s_with_an_outage_keeps_memory_and_latency_flat() -> None:
    reason = gstreamer_missing()
    if reason:
        pytest.skip(reason)
    report = soak.soak(SECONDS, outage_every=30.0, outage_seconds=8.0, window_s=WINDOW_S, warmup_s=WARMUP_S,
                       record=True)
    detail = soak.table(report) + "\n" + "\n".join(report.stderr_tail)

    # It survived the outage: one kill, one reconnection, exit 0, frames on both sides.
    assert report.exit_code == 0, detail
    assert len(report.outages) >= 1 and report.reconnections_logged >= 1, detail
    assert report.survived, detail
    after_outage = [w for w in report.windows if w.t_start_s >= report.outages[-1][1] and w.frames]
    assert after_outage, f"no frames after the outage\n{detail}"
    # 15 frames/s for ~75 s of camera time; a busy machine may process far fewer, never almost none.
    assert report.frames_processed >= 300, detail
    assert report.faces >= report.frames_processed // 2, f"the clip has a face in every frame\n{detail}"

    assert report.memory_growth_mb < MAX_GROWTH_MB, detail

    first, last = report.latency_p95_first_ms, report.latency_p95_last_ms
    assert last <= DRIFT_RATIO * max(first, DRIFT_FLOOR_MS), detail
    assert last < MAX_P95_MS, detail
