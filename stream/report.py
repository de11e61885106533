"""A report per run: one self-contained HTML page plus PNGs, made from the event log.

    emostream report out/clip.events.jsonl            -> out/clip.report/
    emostream run clip.mp4 --report                    (the same, when the run ends)

The folder holds ``report.html``, ``timelines.png`` (every track, one row each,
with a thumbnail of the face), ``track-<id>.png`` (one per track), ``shares.png``
(emotion shares per track) and ``episodes.jsonl`` (see :mod:`stream.episodes`).

The HTML is written with the standard library (``html.escape`` and string
building, no template engine) and embeds the same PNGs as base64 ``data:`` URIs,
its CSS and its few lines of JavaScript (a track filter for the episode list)
inline: one file that opens offline, can be mailed, and needs nothing at view
time. The figures are matplotlib's (Agg canvas, no ``pyplot``, so no global
backend is touched); matplotlib is the ``report`` extra.

Thumbnails come from the source video named in the event log when it can be
found (relative paths are tried against the current folder, then the log's
folder), else from the annotated video (``video``, default
``<name>.annotated.mp4`` beside the log); without either the report says
"no image" in their place.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from stream.capture.sources import is_image_file
from stream.config import EpisodesConfig
from stream.contract import printable
from stream.episodes import Episode, EventTable, derive_episodes, episodes_text, log_name
from stream.errors import ConfigError, OutputError
from stream.render.outputs import OutputGroup

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Report", "default_report_dir", "write_report"]

log = logging.getLogger(__name__)

#: One colour per emotion, the same in every figure and in the HTML.
EMOTION_COLORS = {
    "angry": "#d62728", "disgust": "#8c564b", "fear": "#9467bd", "happy": "#f2c12e",
    "sad": "#1f77b4", "surprise": "#ff7f0e", "neutral": "#9e9e9e", "contempt": "#2ca02c",
}
_SPARE_COLORS = ["#17becf", "#bcbd22", "#e377c2", "#7f7f7f", "#aec7e8", "#98df8a"]
_THUMB_PX = 112
_OVERVIEW_MAX_TRACKS = 12
#: Tracks drawn (one PNG and one section each), most-seen first; the page says how many more there were.
_MAX_TRACKS = 50
#: Rows of the episode table in the page (episodes.jsonl holds them all).
_MAX_EPISODE_ROWS = 5000
#: A timeline ~1000 px wide shows no more than this many points: longer tracks are averaged into bins.
_PLOT_POINTS = 2000
#: Frames further than this apart cannot be reached by decoding forward; seek instead.
_SEEK_AFTER_FRAMES = 250


@dataclass(frozen=True)
class Report:
    """What :func:`write_report` wrote.

    Attributes:
        html: The self-contained page.
        pngs: Every figure, also embedded in the page.
        episodes: The episode list (JSON Lines).
        tracks: Tracks in the log.
        tracks_drawn: Tracks with a timeline and a section in the page (the most-seen, at most 50).
        episode_count: Episodes found.
        thumbnails_from: The video the face thumbnails were cut from, or None.
    """

    html: Path
    pngs: list[Path] = field(default_factory=list)
    episodes: Path | None = None
    tracks: int = 0
    episode_count: int = 0
    tracks_drawn: int = 0
    thumbnails_from: Path | None = None


def default_report_dir(events_path: Path) -> Path:
    """``<name>.report/`` beside the event log ``<name>.events.jsonl``."""
    return Path(events_path).with_name(f"{log_name(events_path)}.report")


def write_report(events_path: Path, out_dir: Path | None = None, *, config: EpisodesConfig | None = None,
                 video: Path | None = None, table: EventTable | None = None,
                 episodes: Sequence[Episode] | None = None, run_lines: Sequence[str] = (),
                 settings: Mapping[str, Any] | None = None) -> Report:
    """Write the report of one run.

    Args:
        events_path: The run's JSON Lines event log.
        out_dir: Folder for the report; default :func:`default_report_dir`.
        config: Episode rules (default: the defaults of ``config.yaml``).
        video: Annotated video of the run, for thumbnails when the source video cannot be found.
        table: The log already read (skips reading ``events_path`` again).
        episodes: The episodes already derived from ``table`` with ``config``.
        run_lines: The run's summary lines, shown as they are (the log does not record speed).
        settings: The run's settings, as nested mappings (shown flattened to dotted keys).

    Returns:
        What was written.

    Raises:
        DataError: The event log is missing or malformed.
        ConfigError: matplotlib is not installed.
        OutputError: The report folder cannot be written.
    """
    canvas_cls = _require_matplotlib()
    events_path = Path(events_path)
    config = config or EpisodesConfig()
    table = table if table is not None else EventTable.from_jsonl(events_path)
    episodes = list(episodes) if episodes is not None else derive_episodes(table, config)
    out_dir = Path(out_dir) if out_dir is not None else default_report_dir(events_path)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"report folder '{printable(str(out_dir))}' could not be written: "
                          f"{err.strerror or err}") from err
    if not out_dir.is_dir():
        raise OutputError(f"report folder '{printable(str(out_dir))}' could not be written: not a directory")

    all_tracks = table.tracks()
    tracks = all_tracks[:_MAX_TRACKS]  # most-seen first: a log with a thousand tracks draws the top ones
    colors = _colors(table.labels)
    name = log_name(events_path)
    multi = len(table.sources) > 1
    slug = {key: f"{key[0]}-{key[1]}" if multi else str(key[1]) for key in tracks}
    html_path = out_dir / "report.html"
    with OutputGroup() as outputs:
        # Every output checked and locked before any is written: a folder named report.html, or a
        # second report into the same folder, fails with nothing written and the earlier report intact.
        for key in tracks:
            outputs.add(out_dir / f"track-{slug[key]}.png", "report figure")
        for figure in ("timelines.png", "shares.png"):
            outputs.add(out_dir / figure, "report figure")
        outputs.add(out_dir / "episodes.jsonl", "episodes")
        outputs.add(html_path, "report")

        thumbs, thumbs_from = _thumbnails(table, tracks, events_path, video)
        pngs: list[Path] = []
        track_png: dict[tuple[int, int], bytes] = {}
        for key in tracks:
            fig = _new_figure(canvas_cls, 10.0, 2.3)
            _draw_rows(fig, table, [key], episodes, colors, thumbs)
            track_png[key] = _save(fig, out_dir / f"track-{slug[key]}.png", outputs, pngs)
        overview = tracks[:_OVERVIEW_MAX_TRACKS]
        fig = _new_figure(canvas_cls, 10.0, 0.6 + 1.9 * max(1, len(overview)))
        _draw_rows(fig, table, overview, episodes, colors, thumbs)
        _save(fig, out_dir / "timelines.png", outputs, pngs)
        fig = _new_figure(canvas_cls, 10.0, 1.0 + 0.45 * max(1, len(tracks)))
        _draw_shares(fig, table, tracks, colors)
        shares_png = _save(fig, out_dir / "shares.png", outputs, pngs)

        episodes_file = out_dir / "episodes.jsonl"
        outputs.write(episodes_file, episodes_text(episodes))
        page = _page(name, table, tracks, slug, episodes, colors, track_png, shares_png, thumbs_from,
                     config, run_lines, settings, all_tracks=len(all_tracks))
        outputs.write(html_path, page)
        outputs.commit()
    return Report(html=html_path, pngs=pngs, episodes=episodes_file, tracks=len(all_tracks),
                  episode_count=len(episodes), thumbnails_from=thumbs_from, tracks_drawn=len(tracks))


def _require_matplotlib() -> type:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as err:
        raise ConfigError("the report needs matplotlib: pip install 'emostream[report]'") from err
    return FigureCanvasAgg


def _colors(labels: Sequence[str]) -> dict[str, str]:
    spare = iter(_SPARE_COLORS * (1 + len(labels) // len(_SPARE_COLORS)))
    return {label: EMOTION_COLORS.get(label) or next(spare) for label in labels}


# --- thumbnails -----------------------------------------------------------------------------------


def _thumbnails(table: EventTable, tracks: list[tuple[int, int]], events_path: Path, video: Path | None
                ) -> tuple[dict[tuple[int, int], np.ndarray], Path | None]:
    """One RGB face crop per track, from its most confident detection."""
    best: dict[tuple[int, int], int] = {}
    for key in tracks:
        rows = np.flatnonzero(table.track_mask(*key))
        best[key] = int(rows[np.argmax(table.face_score[rows])])
    thumbs: dict[tuple[int, int], np.ndarray] = {}
    used: Path | None = None
    for source in range(len(table.sources)):
        keys = [k for k in tracks if k[0] == source]
        if not keys:
            continue
        # The source shows the face without our drawings; the annotated video has a frame per log line.
        candidates: list[tuple[Path, np.ndarray]] = []
        src = _find_file(table.sources[source], events_path)
        if src is not None:
            candidates.append((src, table.face_frame))
        if len(table.sources) == 1:
            annotated = video or events_path.with_name(f"{log_name(events_path)}.annotated.mp4")
            if annotated.is_file():
                candidates.append((annotated, table.face_row))
        for path, position in candidates:
            images = _read_frames(path, sorted({int(position[best[k]]) for k in keys}))
            for key in keys:
                image = images.get(int(position[best[key]]))
                crop = _crop(image, table.face_box_xyxy[best[key]]) if image is not None else None
                if crop is not None:
                    thumbs[key] = crop
            if all(k in thumbs for k in keys):
                used = path
                break
            used = path if any(k in thumbs for k in keys) else used
    return thumbs, used


def _find_file(name: str, events_path: Path) -> Path | None:
    if not name or "://" in name:
        return None
    path = Path(name)
    for candidate in ([path] if path.is_absolute() else [Path.cwd() / path, events_path.parent / path]):
        if candidate.is_file():
            return candidate
    return None


def _read_frames(path: Path, positions: list[int]) -> dict[int, np.ndarray]:
    """The frames at ``positions`` (sorted), decoding forward and seeking only across long jumps."""
    if is_image_file(path):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return {0: image} if image is not None and 0 in positions else {}
    out: dict[int, np.ndarray] = {}
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            log.info("thumbnails: '%s' could not be opened", path)
            return out
        at = 0
        for target in positions:
            if target - at > _SEEK_AFTER_FRAMES:
                cap.set(cv2.CAP_PROP_POS_FRAMES, target)
                at = target
            while at < target and cap.grab():
                at += 1
            ok, image = cap.read() if at == target else (False, None)
            if not ok or image is None:
                break
            out[target] = image
            at += 1
    finally:
        cap.release()
    return out


def _crop(image_bgr: np.ndarray, box_xyxy: np.ndarray) -> np.ndarray | None:
    """A square RGB crop around the box with a margin, ``_THUMB_PX`` wide."""
    h, w = image_bgr.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 1.3
    left, top = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    right, bottom = min(w, math.ceil(cx + side / 2)), min(h, math.ceil(cy + side / 2))
    if right - left < 2 or bottom - top < 2:
        return None
    crop = cv2.resize(image_bgr[top:bottom, left:right], (_THUMB_PX, _THUMB_PX), interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


# --- figures --------------------------------------------------------------------------------------


def _new_figure(canvas_cls: type, width_in: float, height_in: float) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=100, layout="constrained")
    canvas_cls(fig)
    return fig


def _save(fig: Figure, path: Path, outputs: OutputGroup, written: list[Path]) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = buffer.getvalue()
    outputs.write(path, data)
    written.append(path)
    return data


def _track_series(table: EventTable, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Times and probabilities of one track, with a NaN row wherever the face was not seen."""
    rows = np.flatnonzero(table.track_mask(*key))
    rows = rows[np.argsort(table.face_t_s[rows], kind="stable")]
    t_s, probs = table.face_t_s[rows], table.face_probs[rows].astype(np.float64)
    interval = table.frame_interval_s(key[0])
    if interval > 0 and t_s.size > 1:
        breaks = np.flatnonzero(np.diff(t_s) > 1.5 * interval) + 1
        t_s = np.insert(t_s, breaks, t_s[breaks - 1] + interval / 2)
        probs = np.insert(probs, breaks, np.nan, axis=0)
    if t_s.size > _PLOT_POINTS:
        t_s, probs = _binned(t_s, probs, _PLOT_POINTS)
    if t_s.size == 1:  # one frame (an image): show it as a frame-long strip rather than nothing
        t_s = np.array([t_s[0], t_s[0] + (interval or 1e-3)])
        probs = np.repeat(probs, 2, axis=0)
    return t_s, probs


def _binned(t_s: np.ndarray, probs: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean probabilities in ``bins`` equal time bins; a bin without a frame stays NaN (a gap)."""
    seen = ~np.isnan(probs[:, 0])
    edges = np.linspace(t_s[0], t_s[-1], bins + 1)
    idx = np.clip(np.searchsorted(edges, t_s[seen], side="right") - 1, 0, bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    sums = np.stack([np.bincount(idx, weights=probs[seen, k], minlength=bins) for k in range(probs.shape[1])], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (edges[:-1] + edges[1:]) / 2, sums / counts[:, None]


def _draw_rows(fig: Figure, table: EventTable, keys: Sequence[tuple[int, int]], episodes: Sequence[Episode],
               colors: Mapping[str, str], thumbs: Mapping[tuple[int, int], np.ndarray]) -> None:
    """One row per track: thumbnail | stacked probabilities over time, with its episodes under them."""
    if not keys:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no face was seen in this run", ha="center", va="center")
        return
    grid = fig.add_gridspec(2 * len(keys), 2, width_ratios=[1, 8], height_ratios=[4, 1] * len(keys))
    t_lo = float(table.frame_t_s.min())
    t_hi = float(table.frame_t_s.max()) + table.frame_interval_s()
    labels = list(table.labels)
    first_probs: Axes | None = None
    for i, key in enumerate(keys):
        ax_img = fig.add_subplot(grid[2 * i:2 * i + 2, 0])
        ax_img.set_axis_off()
        if key in thumbs:
            ax_img.imshow(thumbs[key])
        else:
            ax_img.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=8, color="#666666")
        ax_p = fig.add_subplot(grid[2 * i, 1], sharex=first_probs)
        first_probs = first_probs or ax_p
        t_s, probs = _track_series(table, key)
        ax_p.stackplot(t_s, probs.T, colors=[colors[k] for k in labels], labels=labels, linewidth=0)
        ax_p.set_xlim(t_lo, max(t_hi, t_lo + 1e-3))
        ax_p.set_ylim(0, 1)
        ax_p.set_yticks([0, 0.5, 1])
        ax_p.tick_params(labelbottom=False, labelsize=8)
        who = f"track {key[1]}" + (f" ({table.sources[key[0]]})" if len(table.sources) > 1 else "")
        ax_p.set_title(f"{who}: seen in {int(table.track_mask(*key).sum())} frames", fontsize=9, loc="left")
        if i == 0:
            ax_p.legend(loc="lower left", bbox_to_anchor=(0, 1.15), ncol=len(labels), fontsize=8, frameon=False)
        ax_e = fig.add_subplot(grid[2 * i + 1, 1], sharex=first_probs)
        ax_e.set_yticks([])
        ax_e.set_ylim(0, 1)
        ax_e.tick_params(labelsize=8, labelbottom=i == len(keys) - 1)
        source = table.sources[key[0]]
        own = [e for e in episodes if e.source == source and e.track_id == key[1]]
        for label in labels:  # one call per colour: a long run has thousands of episodes
            spans = [(e.start_s, e.duration_s) for e in own if e.label == label]
            if spans:
                ax_e.broken_barh(spans, (0, 1), facecolors=colors[label])
        for e in own:
            if e.duration_s > 0.08 * (t_hi - t_lo):
                ax_e.text(e.start_s + e.duration_s / 2, 0.5, e.label, ha="center", va="center", fontsize=7)
        if i == len(keys) - 1:
            ax_e.set_xlabel("time (s); bar: episodes", fontsize=8)


def _shares(table: EventTable, key: tuple[int, int]) -> np.ndarray:
    """Share of the track's frames in which each label was the top one."""
    top = np.argmax(table.face_probs[table.track_mask(*key)], axis=1)
    counts = np.bincount(top, minlength=len(table.labels)).astype(np.float64)
    return counts / max(1.0, counts.sum())


def _draw_shares(fig: Figure, table: EventTable, keys: Sequence[tuple[int, int]], colors: Mapping[str, str]
                 ) -> None:
    ax = fig.add_subplot()
    if not keys:
        ax.axis("off")
        ax.text(0.5, 0.5, "no face was seen in this run", ha="center", va="center")
        return
    shares = np.array([_shares(table, k) for k in keys])
    y = np.arange(len(keys))
    left = np.zeros(len(keys))
    for j, label in enumerate(table.labels):
        ax.barh(y, shares[:, j], left=left, color=colors[label], label=label, height=0.7)
        left += shares[:, j]
    ax.set_yticks(y, [f"track {k[1]}" for k in keys], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the frames in which the track was seen", fontsize=8)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(table.labels), fontsize=8, frameon=False)


# --- the page -------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:1.5em;
color:#222}
h1{font-size:1.5em;margin-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:.25em .7em;border-bottom:1px solid #eee;text-align:left}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto}.track{margin:1.2em 0;padding-top:.3em}
.swatch{display:inline-block;width:.9em;height:.9em;border-radius:2px;vertical-align:-.1em;margin-right:.3em}
.muted{color:#777}code{background:#f3f3f3;padding:0 .25em}
"""

_JS = """
document.getElementById('episode-filter').addEventListener('change', function (e) {
  var want = e.target.value;
  document.querySelectorAll('#episode-table tbody tr').forEach(function (row) {
    row.hidden = want !== '' && row.dataset.track !== want;
  });
});
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for key, value in settings.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.extend(_flatten(value, dotted + "."))
        elif isinstance(value, (list, tuple)):
            out.append((dotted, ", ".join(map(str, value))))
        else:
            out.append((dotted, str(value)))
    return out


def _rows(pairs: Sequence[tuple[str, str]]) -> str:
    return "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in pairs)


def _page(name: str, table: EventTable, tracks: list[tuple[int, int]], slug: Mapping[tuple[int, int], str],
          episodes: Sequence[Episode], colors: Mapping[str, str], track_png: Mapping[tuple[int, int], bytes],
          shares_png: bytes, thumbs_from: Path | None, config: EpisodesConfig, run_lines: Sequence[str],
          settings: Mapping[str, Any] | None, *, all_tracks: int) -> str:
    esc = html.escape
    interval = table.frame_interval_s()
    duration = float(table.frame_t_s.max() - table.frame_t_s.min()) + interval
    latency = table.frame_latency_ms[np.isfinite(table.frame_latency_ms)]
    facts = [
        ("source", ", ".join(table.sources)),
        ("frames in the log", f"{table.frames} ({duration:.2f} s of media"
                              + (f", {1 / interval:.2f} frames/s)" if interval > 0 else ")")),
        ("faces", f"{table.faces} in {int(np.count_nonzero(np.bincount(table.face_row, minlength=table.frames)))}"
                  " frames"),
        ("tracks", str(all_tracks) + (f" (the {len(tracks)} seen in most frames are drawn below)"
                                      if all_tracks > len(tracks) else "")),
        ("episodes", str(len(episodes))),
    ]
    if latency.size:
        facts.append(("latency (capture to result)", f"p50 {np.percentile(latency, 50):.1f} ms, "
                                                     f"p95 {np.percentile(latency, 95):.1f} ms, "
                                                     f"max {latency.max():.1f} ms"))
    gaps = table.frame_gap_s[table.frame_gap_s > 0]
    if gaps.size:
        facts.append(("source outages", f"{gaps.size}, {gaps.sum():.1f} s in all"))
    facts.append(("thumbnails from", str(thumbs_from) if thumbs_from else "no video found (see README)"))

    people = []
    for key in tracks:
        share = _shares(table, key)
        cells = "".join(
            f'<tr><td><span class="swatch" style="background:{colors[label]}"></span>{esc(label)}</td>'
            f'<td class="num">{s:.0%}</td></tr>'
            for label, s in sorted(zip(table.labels, share, strict=True), key=lambda x: -x[1]) if s > 0)
        own = [e for e in episodes if e.source == table.sources[key[0]] and e.track_id == key[1]]
        people.append(
            f'<article class="track" id="track-{slug[key]}" data-track="{slug[key]}">'
            f"<h3>Track {key[1]}</h3>"
            f'<img class="timeline" alt="emotion probabilities of track {key[1]} over time" '
            f'src="{_data_uri(track_png[key])}">'
            f"<p>{len(own)} episode(s); top emotion per frame:</p><table class=\"shares\">{cells}</table></article>")

    options = "".join(f'<option value="{slug[k]}">track {k[1]}</option>' for k in tracks)
    slug_of = {(table.sources[k[0]], k[1]): slug[k] for k in tracks}
    shown = [e for e in episodes if (e.source, e.track_id) in slug_of][:_MAX_EPISODE_ROWS]
    ep_rows = "".join(
        f'<tr data-track="{slug_of[(e.source, e.track_id)]}"><td>{e.track_id}</td>'
        f'<td><span class="swatch" style="background:{colors[e.label]}"></span>{esc(e.label)}</td>'
        f'<td class="num">{e.start_s:.2f}</td><td class="num">{e.end_s:.2f}</td>'
        f'<td class="num">{e.duration_s:.2f}</td><td class="num">{e.start_frame}–{e.end_frame}</td>'
        f'<td class="num">{e.mean_confidence:.2f}</td><td class="num">{e.peak_confidence:.2f}</td></tr>'
        for e in shown)
    ep_note = (f'<p class="muted">{len(shown)} of {len(episodes)} episodes listed (those of the tracks drawn '
               f"above, at most {_MAX_EPISODE_ROWS}); <code>episodes.jsonl</code> holds them all.</p>"
               if len(shown) < len(episodes) else "")
    more = (f'<p class="muted">{all_tracks - len(tracks)} more track(s), seen in fewer frames, are not drawn '
            f"(at most {_MAX_TRACKS}); their episodes are in <code>episodes.jsonl</code>.</p>"
            if all_tracks > len(tracks) else "")
    rules = [("episodes.min_duration_s", str(config.min_duration_s)),
             ("episodes.hysteresis", str(config.hysteresis)), ("episodes.max_gap_s", str(config.max_gap_s))]
    run = (f"<pre>{esc(chr(10).join(run_lines))}</pre>" if run_lines else
           '<p class="muted">The event log does not record the processing speed; '
           "<code>emostream run ... --report</code> adds the run's summary here.</p>")
    setting_rows = _rows(_flatten(settings)) if settings else ""
    if settings and "episodes" in settings:
        rules = []
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>emostream report: {esc(name)}</title><style>{_CSS}</style></head>
<body>
<header><h1>emostream report: {esc(name)}</h1>
<p class="muted">Made from the event log by <code>emostream report</code>; everything on this page is inline.</p>
</header>
<section id="overview"><h2>Overview</h2><table>{_rows(facts)}</table>
<img class="shares" alt="emotion shares per track" src="{_data_uri(shares_png)}"></section>
<section id="people"><h2>People (one timeline per track id)</h2>
<p class="muted">Stacked probabilities over time (blank where the face was not seen); the bar under each
timeline shows its episodes. A face that leaves and comes back may get a new track id.</p>
{"".join(people) or "<p>No face was seen in this run.</p>"}{more}</section>
<section id="episodes"><h2>Episodes</h2>{ep_note}
<p><label>Track <select id="episode-filter"><option value="">all</option>{options}</select></label></p>
<table id="episode-table"><thead><tr><th>track</th><th>emotion</th><th>start (s)</th><th>end (s)</th>
<th>duration (s)</th><th>frames</th><th>mean conf.</th><th>peak conf.</th></tr></thead>
<tbody>{ep_rows}</tbody></table></section>
<section id="run"><h2>Run</h2>{run}
<h3>Settings</h3><table>{_rows(rules)}{setting_rows}</table></section>
<script>{_JS}</script>
</body></html>
"""
