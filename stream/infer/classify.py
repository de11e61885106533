"""Emotion classification of face crops, batched, driven by the model's own contract."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import onnxruntime as ort

from stream.contract import Color, ModelContract
from stream.errors import ModelError
from stream.infer.session import BatchBuckets, create_session

__all__ = ["CropSpec", "EmotionClassifier", "crop_faces", "eye_roll_deg"]


@dataclass(frozen=True)
class CropSpec:
    """How to cut a face for a model: what :func:`crop_faces` reads (a :class:`ModelContract` has it too)."""

    input_size_wh: tuple[int, int]
    color: Color = "gray"
    crop_margin: float = 0.0
    crop_offset_y: float = 0.0


def eye_roll_deg(keypoints_xy: np.ndarray) -> float:
    """The roll of a face from its BlazeFace keypoints: the eye line's angle in degrees.

    0 for an upright face; positive when the subject's left eye (on the image's right)
    sits lower, i.e. the face is turned clockwise on screen (image y points down).
    """
    (rx, ry), (lx, ly) = keypoints_xy[:2].tolist()
    return math.degrees(math.atan2(ly - ry, lx - rx))


def crop_faces(image_bgr: np.ndarray, boxes_xyxy: Sequence[np.ndarray], contract: ModelContract | CropSpec,
               roll_deg: Sequence[float] | None = None) -> list[np.ndarray]:
    """Cut each face as the model expects: a square around the box grown by the margin.

    The square's centre is the box centre moved down by ``crop_offset_y`` box sides.

    One affine warp per face does the crop and the resize together; pixels beyond the
    frame edge repeat the edge, so a face cut by the border still fills the crop.

    Args:
        image_bgr: The frame.
        boxes_xyxy: Face boxes in frame pixels.
        contract: The model's crop rule.
        roll_deg: Per face, the eye line's angle (:func:`eye_roll_deg`); the square is
            turned about its centre by it, so the eyes come out level, and the offset
            is taken along the face's own vertical. None: upright squares.

    Returns:
        uint8 crops of the contract's size, HxW (gray) or HxWx3 in the contract's colour order.
    """
    out_w, out_h = contract.input_size_wh
    crops = []
    for k, box in enumerate(boxes_xyxy):
        x1, y1, x2, y2 = box.tolist()  # plain floats: a few scalar steps per face, no NumPy calls
        box_side = max(x2 - x1, y2 - y1, 1.0)
        cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0 + contract.crop_offset_y * box_side
        side = box_side * (1.0 + 2.0 * contract.crop_margin)
        s = out_w / side  # same scale on both axes: a non-square input gets a taller/wider crop
        left, top = cx - side / 2.0, cy - side * out_h / out_w / 2.0
        # Pixel centres map as in cv2.resize of the crop: dst + 0.5 = (src + 0.5 - left) * s.
        tx, ty = (0.5 - left) * s - 0.5, (0.5 - top) * s - 0.5
        if roll_deg is None or roll_deg[k] == 0.0:
            warp = np.array([[s, 0.0, tx], [0.0, s, ty]], np.float32)
        else:
            warp = _rolled_warp(s, tx, ty, (x1 + x2) / 2.0, (y1 + y2) / 2.0, math.radians(roll_deg[k]))
        crop = cv2.warpAffine(image_bgr, warp, (out_w, out_h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        if contract.color == "gray":
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        elif contract.color == "rgb":
            crop = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
        crops.append(crop)
    return crops


def _rolled_warp(s: float, tx: float, ty: float, px: float, py: float, roll: float) -> np.ndarray:
    """The upright crop's warp (``dst = s * src + (tx, ty)``) applied after turning the frame by
    ``-roll`` about the box centre ``(px, py)``.

    In frame coordinates with pixel centres at ``p + 0.5``, the turn maps ``P`` to
    ``A (P - c) + c`` with ``A`` the rotation by ``-roll``; the upright crop's warp then
    applies. Composed, still one affine map.
    """
    cos, sin = math.cos(roll), math.sin(roll)
    # The upright map as dst + 0.5 = s * P + t; turned: dst + 0.5 = s * A P + s * (c - A c) + t.
    t_x, t_y = tx + 0.5 - 0.5 * s, ty + 0.5 - 0.5 * s
    turned_x = s * (px - (cos * px + sin * py)) + t_x
    turned_y = s * (py - (-sin * px + cos * py)) + t_y
    return np.array([[s * cos, s * sin, turned_x + s * 0.5 * (cos + sin) - 0.5],
                     [-s * sin, s * cos, turned_y + s * 0.5 * (cos - sin) - 0.5]], np.float32)


class EmotionClassifier:
    """An ONNX emotion classifier that carries an emostream contract in its metadata.

    Args:
        session: ONNX Runtime session.
        contract: How to feed the model and read its output.
        name: Where the model came from, for messages.
        align: ``eyes``: crops are turned so the face's eye keypoints lie level
            (:func:`crop_faces` ``roll_deg``); ``none``: upright box crops.
        min_face_px: Faces whose box is shorter than this are marked ``too_small`` by the
            inference stage (``classifier.min_face_px``; 0: never).

    Raises:
        ModelError: The model's input or output does not match its contract.
    """

    def __init__(self, session: ort.InferenceSession, contract: ModelContract, name: str = "classifier", *,
                 buckets: BatchBuckets | None = None, align: Literal["eyes", "none"] = "none",
                 min_face_px: int = 16) -> None:
        self.session = session
        self.align = align
        self.min_face_px = min_face_px
        self.buckets = buckets or BatchBuckets()
        self.contract = contract
        self.labels = contract.labels
        inputs = session.get_inputs()
        outputs = session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelError(f"classifier model '{name}' must have one input and one output")
        shape = list(inputs[0].shape)
        expected = list(contract.input_shape())
        fixed = [d if isinstance(d, int) else None for d in shape[1:]]
        if len(shape) != 4 or any(d is not None and d != e for d, e in zip(fixed, expected, strict=True)):
            raise ModelError(
                f"classifier model '{name}' is incompatible: input shape {shape} does not match its "
                f"contract (batch, {', '.join(map(str, expected))})"
            )
        out_shape = outputs[0].shape
        if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != len(self.labels)):
            raise ModelError(
                f"classifier model '{name}' is incompatible: output shape {out_shape} does not match "
                f"{len(self.labels)} labels"
            )
        by_name = {o.name: o for o in outputs}
        for head, parts in contract.heads:
            head_shape = by_name[head].shape if head in by_name else None
            if head_shape is None or len(head_shape) != 2 or (
                    isinstance(head_shape[1], int) and head_shape[1] != len(parts)):
                raise ModelError(f"classifier model '{name}' is incompatible: its contract's head '{head}' "
                                 f"({len(parts)} values) is not an output of shape (batch, {len(parts)})")
        self.input_name = inputs[0].name
        self.uint8_input = inputs[0].type == "tensor(uint8)"
        self.output_name = outputs[0].name
        self._outputs = [self.output_name, *contract.head_names]

    @classmethod
    def from_path(cls, path: Path, providers: tuple[str, ...] = ("cpu",), threads: int = 0, *,
                  provider_opts: dict[str, dict[str, str]] | None = None, buckets: BatchBuckets | None = None,
                  uint8_input: bool = False, align: Literal["eyes", "none"] = "none",
                  min_face_px: int = 16) -> EmotionClassifier:
        """Load a classifier and its contract.

        Raises:
            ModelError: Missing or corrupt file, no contract, or a contract that does not fit.
        """
        # With uint8 input the contract is read first from a plain CPU session (tens of ms), so the
        # GPU session, the costly one, is built once: with the normalisation the contract gives.
        session = create_session(path, ("cpu",) if uint8_input else providers, threads, what="classifier",
                                 provider_opts=provider_opts)
        meta = session.get_modelmeta().custom_metadata_map
        contract = ModelContract.from_metadata(meta, origin=f"classifier model '{path}'")
        if uint8_input:  # now that the contract says how to normalise: into the graph
            session = create_session(path, providers, threads, what="classifier", provider_opts=provider_opts,
                                     uint8_normalize=(contract.normalize_scale, contract.normalize_offset))
        return cls(session, contract, name=str(path), buckets=buckets, align=align, min_face_px=min_face_px)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run once per batch size (every bucket, with buckets) so the first real faces are not slow."""
        w, h = self.contract.input_size_wh
        for size in self.buckets.sizes or batch_sizes:
            shape = (size, h, w) if self.contract.color == "gray" else (size, h, w, 3)
            self.classify(np.zeros(shape, np.uint8))

    def classify(self, crops: np.ndarray) -> np.ndarray:
        """Probabilities (N, labels) for uint8 crops (N, H, W) or (N, H, W, 3), one model call."""
        return self.predict(crops)[0]

    def predict(self, crops: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Probabilities (N, labels) and each extra head's values (N, components), one model call.

        The contract turns crops into input and output into probabilities
        (:meth:`ModelContract.preprocess`, :meth:`ModelContract.postprocess`).
        """
        contract = self.contract
        if crops.shape[0] == 0:
            return (np.zeros((0, len(self.labels)), np.float32),
                    {name: np.zeros((0, len(parts)), np.float32) for name, parts in contract.heads})
        x = contract.preprocess(crops, normalize=not self.uint8_input)
        outs = self.buckets.run(lambda b: self.session.run(self._outputs, {self.input_name: b}), x)
        heads = {name: contract.merge_mirrors(np.asarray(out, np.float32))
                 for name, out in zip(contract.head_names, outs[1:], strict=True)}
        return contract.postprocess(outs[0]), heads
