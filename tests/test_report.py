"""The report of a real run of the four-face clip: HTML, PNGs, episodes, and bad input."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import run_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """Every start tag with its attributes, and the text of the page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == tag and (cls is None or cls in a.get("class", "").split())]


@pytest.fixture(scope="module")
def quad_run(clips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Path, subprocess.CompletedProcess]:
    """``emostream run quad.mp4 --report`` into a temporary folder: four faces, 120 frames."""
    out = tmp_path_factory.mktemp("quad_run")
    proc = run_cli("run", str(clips["quad"]), "--output", str(out / "quad.annotated.mp4"),
                   "--events", str(out / "quad.events.jsonl"), "--no-display", "--no-progress", "--report",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def track_ids(events: Path) -> set[int]:
    return {f["id"] for line in events.read_text().splitlines() for f in json.loads(line)["faces"]}


def test_run_writes_episodes_and_says_how_many(quad_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, proc = quad_run
    episodes = [json.loads(line) for line in (out / "quad.episodes.jsonl").read_text().splitlines()]
    assert track_ids(out / "quad.events.jsonl") == {0, 1, 2, 3}
    assert {e["track_id"] for e in episodes} == {0, 1, 2, 3}  # 120 frames = 4 s: every face has an episode
    assert f"episodes: {len(episodes)} over 4 track(s)" in proc.stderr
    for e in episodes:
        assert 0 <= e["start_frame"] <= e["end_frame"] < 120
        assert e["duration_s"] >= 0.5 - 1e-6  # episodes.min_duration_s
        assert 0 < e["mean_confidence"] <= e["peak_confidence"] <= 1
    # Per track, episodes follow each other without overlap.
    for tid in range(4):
        own = [e for e in episodes if e["track_id"] == tid]
        assert all(a["end_frame"] < b["start_frame"] for a, b in itertools.pairwise(own))


def test_report_html_is_self_contained_with_one_timeline_per_track(
        quad_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, proc = quad_run
    report = out / "quad.report"
    html_path = report / "report.html"
    assert f"wrote: {html_path}" in proc.stderr
    page = Page(html_path.read_text(encoding="utf-8"))
    assert len(page.find("img", "timeline")) == len(track_ids(out / "quad.events.jsonl")) == 4
    assert {a["data-track"] for a in page.find("article", "track")} == {"0", "1", "2", "3"}
    # Nothing is fetched at view time: every image is inline, no stylesheet or script is linked.
    images = page.find("img")
    assert images and all(a["src"].startswith("data:image/png;base64,") for a in images)
    assert all(base64.b64decode(a["src"].split(",", 1)[1]).startswith(PNG_MAGIC) for a in images)
    assert not page.find("link") and all("src" not in a for a in page.find("script"))
    # The episode list matches the episodes file; the run's summary and settings are there.
    episodes = (report / "episodes.jsonl").read_text().splitlines()
    assert episodes == (out / "quad.episodes.jsonl").read_text().splitlines()
    rows = [a for t, a in page.tags if t == "tr" and "data-track" in a]
    assert len(rows) == len(episodes)
    text = " ".join(page.text)
    assert "frames/s" in text and "episodes.min_duration_s" in text and "tracking.iou_threshold" in text
    assert "no video found" not in text  # thumbnails came from the source clip


def test_report_pngs_exist_and_are_images(quad_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    report = quad_run[0] / "quad.report"
    names = {"timelines.png", "shares.png", "track-0.png", "track-1.png", "track-2.png", "track-3.png"}
    assert names <= {p.name for p in report.glob("*.png")}
    for name in names:
        path = report / name
        assert path.stat().st_size > 1000 and path.read_bytes().startswith(PNG_MAGIC)
        image = cv2.imread(str(path))
        assert image is not None and image.shape[0] > 50 and image.std() > 10  # drawn, not blank
    # Four rows of timelines are taller than one.
    assert cv2.imread(str(report / "timelines.png")).shape[0] > 3 * cv2.imread(str(report / "track-0.png")).shape[0]


def test_report_command_on_a_finished_log(quad_run: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> None:
    out, _ = quad_run
    proc = run_cli("report", str(out / "quad.events.jsonl"), "--out", str(tmp_path / "r"))
    assert proc.returncode == 0, proc.stderr
    assert "episodes:" in proc.stderr and "over 4 track(s)" in proc.stderr
    page = Page((tmp_path / "r" / "report.html").read_text(encoding="utf-8"))
    assert len(page.find("img", "timeline")) == 4
    assert (tmp_path / "r" / "timelines.png").stat().st_size > 0
    # Without --report's summary the page says where the speed would come from.
    assert "does not record the processing speed" in " ".join(page.text)


def test_thumbnails_degrade_without_the_source_video(quad_run: tuple[Path, subprocess.CompletedProcess],
                                                     tmp_path: Path) -> None:
    out, _ = quad_run
    moved = tmp_path / "clip.events.jsonl"
    lines = [json.loads(line) for line in (out / "quad.events.jsonl").read_text().splitlines()]
    moved.write_text("".join(json.dumps({**r, "source": "gone/quad.mp4"}) + "\n" for r in lines))
    # The annotated video beside the log stands in for the source ...
    shutil.copy(out / "quad.annotated.mp4", tmp_path / "clip.annotated.mp4")
    proc = run_cli("report", str(moved))
    assert proc.returncode == 0, proc.stderr
    text = " ".join(Page((tmp_path / "clip.report" / "report.html").read_text()).text)
    assert str(tmp_path / "clip.annotated.mp4") in text
    # ... and without any video the report is still written, saying so.
    (tmp_path / "clip.annotated.mp4").unlink()
    proc = run_cli("report", str(moved), "--out", str(tmp_path / "bare"))
    assert proc.returncode == 0, proc.stderr
    page = Page((tmp_path / "bare" / "report.html").read_text())
    assert "no video found" in " ".join(page.text) and len(page.find("img", "timeline")) == 4
    with_thumb = cv2.imread(str(out / "quad.report" / "track-0.png"))
    without = cv2.imread(str(tmp_path / "bare" / "track-0.png"))
    assert with_thumb.shape == without.shape and not np.array_equal(with_thumb, without)


@pytest.mark.parametrize(("content", "args", "fragments"), [
    (None, (), ["event log", "no such file"]),
    ("", (), ["holds no frames"]),
    ('{"frame": 0, "t": 0.0, "faces": []}\n{"frame": 1,\n{"frame": 2, "t": 0.1, "faces": []}\n', (),
     ["line 2: not JSON"]),
    ('{"frame": 0, "t": 0.0, "faces": []}\n', ("--video", "missing.mp4"), ["--video 'missing.mp4'"]),
    ('{"frame": 0, "t": 0.0, "faces": []}\n', ("--config", "missing.yaml"), ["config 'missing.yaml'"]),
])
def test_report_bad_input_is_one_line_exit_2(tmp_path: Path, content: str | None, args: tuple[str, ...],
                                              fragments: list[str]) -> None:
    events = tmp_path / "x.events.jsonl"
    if content is not None:
        events.write_text(content)
    proc = run_cli("report", str(events), "--out", str(tmp_path / "r"), *args)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(f in lines[0] for f in fragments), lines[0]


def test_report_without_faces(tmp_path: Path) -> None:
    events = tmp_path / "empty.events.jsonl"
    events.write_text("".join(json.dumps({"source": "x", "frame": i, "t": i / 25, "faces": []}) + "\n"
                              for i in range(10)))
    proc = run_cli("report", str(events))
    assert proc.returncode == 0, proc.stderr
    page = Page((tmp_path / "empty.report" / "report.html").read_text())
    assert page.find("img", "timeline") == [] and "No face was seen" in " ".join(page.text)
    assert (tmp_path / "empty.report" / "episodes.jsonl").read_text() == ""


def test_report_flag_needs_the_event_log(clips: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("output: {events: false}\n")
    proc = run_cli("run", str(clips["vga"]), "--config", str(config), "--output", str(tmp_path / "o.mp4"),
                   "--no-display", "--report")
    assert proc.returncode == 2 and "--report needs the event log" in proc.stderr
    assert not (tmp_path / "o.mp4").exists()
