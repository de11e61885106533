"""A short fleet soak (issue 17 item 6): ``emostream serve`` on 8 paced RTSP cameras with MQTT on, for 90 s.

``benchmarks/soak_fleet.py`` does the work: real GStreamer RTSP cameras (the carphone clip at
320x240, 15 frames/s), a real Mosquitto broker and subscriber, ``emostream serve`` as a subprocess.
In 90 s, drawn from a fixed seed: two cameras killed for 5-8 s and started again, two cameras
added through ``POST /api/sources`` (at 27 s and 40 s) and one removed through ``DELETE`` (at 54 s),
the broker killed for 5 s at 45 s; then Ctrl-C. The hour is the benchmark's job
(``benchmarks/RESULTS.md``).

The bounds are loose on purpose, for a noisy shared 2-core machine. Memory: adding two sources
costs tens of MB, so the growth bounded tightly is the one from a window after the last change to
the end (measured at +2 to +3 MB here); the growth over the whole run after the warm-up only
coarsely. Frames: within each stretch between outages, every frame a camera sent is either in the
log, a skipped index (dropped to stay live) or skipped undecoded as stale (counted by
``benchmarks/serve_counting.py``). What is left is mostly the reader's backlog when a stretch ends
(the frames still in the connection when the camera is killed or serve stops; the clock of the
count is the frames' arrival): 0 to 2 frames per stretch on a quiet machine, up to 21 (1.4 s)
measured here with a second fleet running beside it, so 30 per stretch plus 1 % of the frames
sent are allowed: in 90 s a steady loss of more than about 3 % still fails. (The hour on the busy
machine found a steady 1.1-1.4 % on every source, outages or not, in stretches where frames arrived
0.1-1 s apart: ``benchmarks/RESULTS.md``, fleet soak.)
"""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO
from tests.rtsp_fixtures import gstreamer_missing

pytest.importorskip("paho.mqtt.client", reason="the mqtt extra is not installed: pip install -e '.[mqtt]'")
pytest.importorskip("starlette", reason="the serve extra is not installed: pip install -e '.[serve]'")

sys.path.insert(0, str(REPO / "benchmarks"))

import soak_fleet

SECONDS = 90.0
WINDOW_S = 15.0
WARMUP_S = 15.0
#: From a window after the last add/remove to the end.
MAX_GROWTH_AFTER_CHANGES_MB = 30.0
#: From the warm-up to the end, two sources added and one removed in between.
MAX_GROWTH_MB = 150.0
#: Frames lost beyond outages, per source: this many per stretch between outages, plus a share of those sent.
JITTER_PER_STRETCH, MAX_LOST_SHARE = 30, 0.01
#: Frames dropped during the shutdown, after the last scrape.
MAX_DROPPED_MISMATCH = 10
#: Messages the subscriber may miss (those in flight when the broker was killed, before it resubscribed).
MIN_MQTT_RECEIVED_SHARE = 0.9


@pytest.mark.slow
def test_fleet_soak_90s_cameras_killed_added_removed_broker_restarted() -> None:
    for reason in (gstreamer_missing(), "" if soak_fleet.MOSQUITTO else "mosquitto is not installed"):
        if reason:
            pytest.skip(reason)
    report = soak_fleet.soak_fleet(SECONDS, cameras=8, outages=2, outage_min=5.0, outage_max=8.0, broker_down_s=5.0,
                                   window_s=WINDOW_S, warmup_s=WARMUP_S, sample_every=2.0, seed=17)
    detail = soak_fleet.table(report) + "\nserve's stderr:\n" + "\n".join(report.stderr_tail)

    # Ctrl-C finalises everything: serve's documented exit code 130; every API call answered.
    assert report.exit_code == 130, detail
    assert not report.api_errors, detail
    assert len(report.outages) == 2 and report.broker_down is not None, detail

    by_name = {s.name: s for s in report.sources}
    assert sorted(by_name) == [f"cam{i}" for i in range(10)], detail
    added = [s for s in report.sources if s.added_s is not None]
    removed = [s for s in report.sources if s.removed_s is not None]
    assert [s.name for s in added] == ["cam8", "cam9"] and len(removed) == 1, detail
    for s in report.sources:
        assert s.records > 0 and s.final_log, f"{s.name}: no final event log\n{detail}"
        assert s.increasing, f"{s.name}: frame indices not increasing\n{detail}"
        assert s.faces >= s.records // 2, f"{s.name}: the clip has a face in every frame\n{detail}"
        # Every index skipped is a frame the pipeline counted as dropped; /metrics is read last just before the
        # Ctrl-C, so the frames dropped while it shuts down are in the logs and not in that count.
        assert s.dropped_metric is not None and abs(s.skipped - s.dropped_metric) <= MAX_DROPPED_MISMATCH, detail
        assert s.gaps_logged >= s.outages_scheduled, f"{s.name}: an outage without its gap_s\n{detail}"
        assert s.stale_skipped is not None, detail
        stretches = s.gaps_logged + 1
        assert s.lost_unexplained <= JITTER_PER_STRETCH * stretches + MAX_LOST_SHARE * s.expected, \
            f"{s.name}: frames lost beyond outages\n{detail}"
    # The removed source stopped there: its log ends by then, and holds much less than a running one.
    assert removed[0].records < max(s.records for s in report.sources if s.removed_s is None), detail

    assert report.memory_growth_after_changes_mb < MAX_GROWTH_AFTER_CHANGES_MB, detail
    assert report.memory_growth_mb < MAX_GROWTH_MB, detail

    assert report.mqtt_received_total > 0 and report.mqtt_published > 0, detail
    assert report.mqtt_received_by_then <= report.mqtt_published + 10, detail
    assert report.mqtt_received_by_then >= MIN_MQTT_RECEIVED_SHARE * report.mqtt_published, detail
    assert report.subscriber_connects >= 2, f"the subscriber did not see the broker restart\n{detail}"
