"""The input/output contract an emotion model carries in its ONNX metadata.

A classifier ONNX file is self-describing: one metadata entry, key
:data:`CONTRACT_KEY`, holds a JSON object that says how to turn a face crop
into the model's input and how to read its output. The stream reads it, so a
model exported by ``training/`` (or anyone else) drops in with ``--model``.
:meth:`ModelContract.from_onnx` (a file), :meth:`ModelContract.from_proto` and
:meth:`ModelContract.write_to` (an ``onnx.ModelProto``) are the code that reads and
writes that entry.

JSON layout (version 1)::

    {
      "version": 1,
      "labels": ["angry", "disgust", ...],   # output order
      "input_size_wh": [64, 64],             # crop is resized to this
      "color": "gray",                       # "gray" (1 channel), "rgb" or "bgr" (3)
      "layout": "NHWC",                      # or "NCHW"
      "normalize": {"scale": 0.00784, "offset": -1.0},  # x = uint8 * scale + offset
      "crop_margin": 0.15,                   # square face crop grown by this share of
                                             # its side on every edge
      "crop_offset_y": 0.0,                  # optional: crop centre moved down by this
                                             # many box sides (negative: up)
      "output": "probabilities",             # or "logits" (softmax applied by the reader)
      "temperature": 1.0,                    # optional: calibrated probabilities are
                                             # softmax(logits / T), for a probability
                                             # output softmax(log(p) / T)
      "logit_bias": [0.1, 0.9, ...]          # optional: one number per label, added after
                                             # the temperature: softmax(logits / T + b)
    }

A contract without ``temperature`` reads as 1.0 (no change), and one without
``logit_bias`` adds nothing, so models exported before the fields existed keep
working. The logit bias is a prior correction (logit adjustment): it moves the
decision between classes, e.g. toward the class shares of the faces a model will
see rather than those of its training set (``training/prior.py`` fits it).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stream.errors import ModelError

__all__ = ["CONTRACT_KEY", "FER2013_LABELS", "ModelContract", "calibrated", "printable"]

CONTRACT_KEY = "emostream.contract"

#: FER2013's label order (the ``emotion`` column's 0..6).
FER2013_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

Color = Literal["gray", "rgb", "bgr"]
Layout = Literal["NHWC", "NCHW"]
OutputKind = Literal["probabilities", "logits"]

#: Extra heads: their names become keys of event-log faces and dataset columns.
MAX_HEADS = 16
_HEAD_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_RESERVED_FIELDS = frozenset({"id", "box_xyxy", "score", "label", "probs", "keypoints_xy", "too_small", "source",
                              "frame", "track_id", "t_s", "x1", "y1", "x2", "y2"})

#: Bounds of a contract's labels: they are drawn on frames and printed in summaries.
MAX_LABELS = 1000
MAX_LABEL_CHARS = 64
#: Bound of each logit bias: e^50 already moves any probability to 0 or 1.
MAX_LOGIT_BIAS = 50.0


def _metadata_props(proto: Any) -> dict[str, str]:
    """An ``onnx.ModelProto``'s metadata entries as a dict (a repeated key: its last value)."""
    return {p.key: p.value for p in proto.metadata_props}


def printable(text: str) -> str:
    """``text`` with control characters (terminal escape codes, newlines) shown as ``\\x1b``-style escapes.

    A model's labels reach the terminal, the event log and the video: a label holding
    ``ESC [ 2 J`` must not clear the user's screen.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def calibrated(raw: np.ndarray, *, output: OutputKind = "probabilities", temperature: float = 1.0,
               logit_bias: Sequence[float] | None = None) -> np.ndarray:
    """Probabilities from a classifier's raw output, scaled by a calibration temperature, then biased.

    Logits get ``softmax(raw / T + b)``; probabilities get ``softmax(log(raw) / T + b)``,
    the same thing (the log of a softmax is its logits less a per-row constant),
    and are returned as they are when T is 1 and there is no bias.

    Args:
        raw: ``(N, labels)`` model output.
        output: ``probabilities`` or ``logits``.
        temperature: T > 0; above 1 softens, below 1 sharpens.
        logit_bias: One number per label added to the scaled logits (None: none).

    Returns:
        float32 ``(N, labels)``, rows summing to 1.
    """
    out = np.asarray(raw, np.float32)
    if output == "probabilities":
        if temperature == 1.0 and logit_bias is None:
            return out
        # softmax(log(p) / T + b) is p ** (1 / T) * exp(b), normalised: a few NumPy calls per batch on
        # the inference thread instead of eight. Each row over its largest p first, so at any T its
        # largest entry stays 1 and the row cannot underflow to nothing.
        if temperature != 1.0:
            out = np.power(out / out.max(axis=1, keepdims=True), np.float32(1.0 / temperature))
        if logit_bias is not None:
            out = out * np.exp(np.asarray(logit_bias, np.float32))
        return out / out.sum(axis=1, keepdims=True)
    if temperature != 1.0:
        out = out / np.float32(temperature)
    if logit_bias is not None:
        out = out + np.asarray(logit_bias, np.float32)
    out = out - out.max(axis=1, keepdims=True)
    np.exp(out, out=out)
    out /= out.sum(axis=1, keepdims=True)
    return out


@dataclass(frozen=True)
class ModelContract:
    """How to feed an emotion classifier and read its output.

    Attributes:
        labels: Class names in the order of the model's output.
        input_size_wh: Width and height of the model input in pixels.
        color: ``gray`` (one channel) or ``rgb`` / ``bgr`` (three channels).
        layout: ``NHWC`` or ``NCHW``.
        normalize_scale: Input value is ``uint8 * scale + offset``.
        normalize_offset: See ``normalize_scale``.
        crop_margin: The square face crop grows by this share of its side on each edge.
        crop_offset_y: The crop's centre sits this many face-box sides (``max(w, h)``, before
            the margin) below the box centre; negative moves it up. BlazeFace boxes sit
            lower on the face than FER2013's framing (``benchmarks/crop_framing.py``).
        output: ``probabilities`` (softmax inside the model) or ``logits``.
        temperature: Calibration temperature T > 0 (``emostream calibrate`` fits it):
            the reported probabilities are ``softmax(logits / T)``; 1.0 leaves the
            model's own output unchanged.
        flip_average: Run every crop and its mirror image and average the raw outputs
            (test-time augmentation: more accurate, twice the classifier's cost).
        logit_bias: Optional, one number per label added to the logits after the
            temperature (:func:`calibrated`): a prior correction. None: no bias.
        heads: More named outputs of the model besides the emotion probabilities (a regression
            such as valence/arousal, or any vector): ``(output name, component names)`` pairs.
            Each face then carries them (``Face.heads``), and the event log, the dataset and
            the dashboard show them, under the head's name, with no code of their own.
    """

    labels: tuple[str, ...]
    input_size_wh: tuple[int, int]
    color: Color = "gray"
    layout: Layout = "NHWC"
    normalize_scale: float = 1.0 / 255.0
    normalize_offset: float = 0.0
    crop_margin: float = 0.0
    crop_offset_y: float = 0.0
    output: OutputKind = "probabilities"
    temperature: float = 1.0
    flip_average: bool = False
    logit_bias: tuple[float, ...] | None = None
    heads: tuple[tuple[str, tuple[str, ...]], ...] = ()
    version: int = field(default=1)

    @classmethod
    def from_onnx(cls, path: Path | str) -> ModelContract:
        """The contract an ONNX classifier carries in its metadata (:data:`CONTRACT_KEY`).

        Raises:
            ModelError: The file is missing or not a model, or has no valid contract.
        """
        import onnxruntime as ort  # only when a model is read

        if not Path(path).is_file():
            raise ModelError(f"classifier model '{path}' could not be loaded: no such file")
        try:
            model_meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta()
        except Exception as err:  # ONNX Runtime raises its own types for a file that is not a model
            raise ModelError(f"classifier model '{path}' could not be loaded: not an ONNX model "
                             f"({printable(str(err).splitlines()[0][:200])})") from None
        return cls.from_metadata(model_meta.custom_metadata_map, origin=f"classifier model '{path}'")

    @classmethod
    def from_proto(cls, proto: Any, *, origin: str = "model") -> ModelContract:
        """The contract in an ``onnx.ModelProto``'s ``metadata_props`` (:data:`CONTRACT_KEY`).

        Raises:
            ModelError: It has no valid contract.
        """
        return cls.from_metadata(_metadata_props(proto), origin=origin)

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], *, origin: str = "model") -> ModelContract:
        """The contract in an ONNX model's metadata entries (key -> value), named ``origin`` in errors.

        Raises:
            ModelError: There is no :data:`CONTRACT_KEY` entry, or it is not a valid contract.
        """
        if CONTRACT_KEY not in meta:
            raise ModelError(f"{origin} has no '{CONTRACT_KEY}' metadata: export it with "
                             "'emostream export' so the stream knows its labels and input")
        return cls.from_json(meta[CONTRACT_KEY], origin=origin)

    def write_to(self, proto: Any, *, keep_others: bool = True) -> None:
        """Store this contract (:meth:`to_json`) in an ``onnx.ModelProto``'s ``metadata_props``
        under :data:`CONTRACT_KEY`, replacing any contract there.

        Args:
            proto: The model, changed in place.
            keep_others: Keep the model's other metadata entries (each key once, in order);
                False: the contract becomes its only entry.
        """
        meta = _metadata_props(proto) if keep_others else {}
        meta[CONTRACT_KEY] = self.to_json()
        del proto.metadata_props[:]
        for key, value in meta.items():
            proto.metadata_props.add(key=key, value=value)

    def normalize(self, x: Any) -> Any:
        """``x * scale + offset``: float32 pixels as the model wants them (a NumPy array or a
        TensorFlow tensor: training normalises inside its input pipeline with this too)."""
        return x * self.normalize_scale + self.normalize_offset

    def preprocess(self, crops: np.ndarray, *, normalize: bool = True, mirrors: bool = True) -> np.ndarray:
        """The model input for uint8 crops ``(N, H, W)`` (gray) or ``(N, H, W, C)``: normalised
        (:meth:`normalize`; not when the graph normalises uint8 itself: ``normalize=False``), channel
        axis, layout, and with ``flip_average`` the mirror images appended (``mirrors=False``: not).
        The one place this recipe is written: the stream, evaluation, export and quantisation use it."""
        x = self.normalize(crops.astype(np.float32)).astype(np.float32, copy=False) if normalize else crops
        if x.ndim == 3:
            x = x[..., None]
        if self.layout == "NCHW":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return self.with_mirrors(x) if mirrors else x

    def postprocess(self, raw: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, labels)`` from the model's raw emotion output for :meth:`preprocess`'s input:
        mirror averaging, softmax of logits, temperature and bias, as this contract says."""
        return self.probabilities(self.merge_mirrors(raw))

    @property
    def head_names(self) -> tuple[str, ...]:
        """The names of the extra outputs (:attr:`heads`), in order."""
        return tuple(name for name, _ in self.heads)

    @property
    def channels(self) -> int:
        """Number of input channels (1 for gray, 3 for colour)."""
        return 1 if self.color == "gray" else 3

    def input_shape(self) -> tuple[int, int, int]:
        """Input shape without the batch axis, in the contract's layout."""
        w, h = self.input_size_wh
        return (h, w, self.channels) if self.layout == "NHWC" else (self.channels, h, w)

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        """The model's raw output ``(N, labels)`` as calibrated probabilities (:func:`calibrated`)."""
        return calibrated(raw, output=self.output, temperature=self.temperature, logit_bias=self.logit_bias)

    def with_mirrors(self, x: np.ndarray) -> np.ndarray:
        """With ``flip_average``: the model inputs ``x`` followed by their mirror images (else ``x``)."""
        if not self.flip_average:
            return x
        width_axis = 2 if self.layout == "NHWC" else 3
        return np.concatenate([x, np.flip(x, axis=width_axis)])

    def merge_mirrors(self, raw: np.ndarray) -> np.ndarray:
        """With ``flip_average``: the mean of each input's and its mirror's raw output (else ``raw``)."""
        if not self.flip_average:
            return raw
        n = len(raw) // 2
        return (raw[:n] + raw[n:]) / 2

    def to_json(self) -> str:
        """Serialise to the JSON stored under :data:`CONTRACT_KEY`."""
        data: dict[str, Any] = asdict(self)
        data["labels"] = list(self.labels)
        data["input_size_wh"] = list(self.input_size_wh)
        data["normalize"] = {"scale": data.pop("normalize_scale"), "offset": data.pop("normalize_offset")}
        if self.logit_bias is None:
            del data["logit_bias"]  # contracts without a bias stay as they were
        else:
            data["logit_bias"] = list(self.logit_bias)
        if self.heads:
            data["heads"] = [{"name": name, "labels": list(parts)} for name, parts in self.heads]
        else:
            del data["heads"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, origin: str = "model") -> ModelContract:
        """Parse and validate the JSON stored under :data:`CONTRACT_KEY`.

        Raises:
            ModelError: The JSON is malformed or a field is missing or invalid.
        """
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as err:
            raise ModelError(f"{origin}: contract metadata is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise ModelError(f"{origin}: contract metadata must be a JSON object")
        try:
            version = int(data.get("version", 1))
            if version != 1:
                raise ValueError(f"unsupported contract version {version}")
            if not isinstance(data["labels"], list):
                raise ValueError(f"'labels' must be a list of names, got {data['labels']!r:.60}")
            labels = tuple(printable(str(x)) for x in data["labels"])
            size = tuple(int(x) for x in data["input_size_wh"])
            norm = data.get("normalize", {})
            if not isinstance(norm, dict):
                raise ValueError(f"'normalize' must be an object with scale and offset, got {norm!r:.60}")
            bias = data.get("logit_bias")
            if bias is not None:
                if not isinstance(bias, list) or not all(
                        isinstance(b, (int, float)) and not isinstance(b, bool) for b in bias):
                    raise ValueError(f"'logit_bias' must be a list of numbers, got {bias!r:.60}")
                bias = tuple(float(b) for b in bias)
            heads = data.get("heads", [])
            if not isinstance(heads, list) or not all(
                    isinstance(h, dict) and isinstance(h.get("name"), str) and isinstance(h.get("labels"), list)
                    for h in heads):
                raise ValueError(f"'heads' must be a list of {{name, labels}} objects, got {heads!r:.60}")
            contract = cls(
                labels=labels,
                input_size_wh=(size[0], size[1]) if len(size) == 2 else (0, 0),
                color=data.get("color", "gray"),
                layout=data.get("layout", "NHWC"),
                normalize_scale=float(norm.get("scale", 1.0 / 255.0)),
                normalize_offset=float(norm.get("offset", 0.0)),
                crop_margin=float(data.get("crop_margin", 0.0)),
                crop_offset_y=float(data.get("crop_offset_y", 0.0)),
                output=data.get("output", "probabilities"),
                temperature=float(data.get("temperature", 1.0)),
                flip_average=data.get("flip_average", False),
                logit_bias=bias,
                heads=tuple((printable(h["name"]), tuple(printable(str(x)) for x in h["labels"])) for h in heads),
            )
        except KeyError as err:
            raise ModelError(f"{origin}: contract metadata is invalid: {err} is missing") from err
        except (TypeError, ValueError, OverflowError) as err:
            raise ModelError(f"{origin}: contract metadata is invalid: {printable(str(err))}") from err
        contract.validate(origin)
        return contract

    def validate(self, origin: str = "model") -> None:
        """Check field values.

        Raises:
            ModelError: A field is out of range.
        """
        problems = []
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            problems.append(f"labels must be 2+ distinct names, got {list(self.labels)!r:.200}")
        elif len(self.labels) > MAX_LABELS or max(map(len, self.labels)) > MAX_LABEL_CHARS:
            problems.append(f"labels must be at most {MAX_LABELS} names of at most {MAX_LABEL_CHARS} characters")
        if len(self.input_size_wh) != 2 or not 8 <= min(self.input_size_wh) <= max(self.input_size_wh) <= 1024:
            problems.append(f"input_size_wh must be two sizes from 8 to 1024, got {list(self.input_size_wh)}")
        if not (math.isfinite(self.normalize_scale) and math.isfinite(self.normalize_offset)):
            problems.append(f"normalize scale and offset must be finite numbers, got "
                            f"{self.normalize_scale}, {self.normalize_offset}")
        if self.color not in ("gray", "rgb", "bgr"):
            problems.append(f"color must be gray, rgb or bgr, got {self.color!r}")
        if self.layout not in ("NHWC", "NCHW"):
            problems.append(f"layout must be NHWC or NCHW, got {self.layout!r}")
        if self.output not in ("probabilities", "logits"):
            problems.append(f"output must be probabilities or logits, got {self.output!r}")
        if not 0.0 <= self.crop_margin <= 1.0:
            problems.append(f"crop_margin must be in [0, 1], got {self.crop_margin}")
        if not -0.5 <= self.crop_offset_y <= 0.5:
            problems.append(f"crop_offset_y must be in [-0.5, 0.5], got {self.crop_offset_y}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            problems.append(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not isinstance(self.flip_average, bool):
            problems.append(f"flip_average must be true or false, got {self.flip_average!r:.60}")
        if self.logit_bias is not None and (
                len(self.logit_bias) != len(self.labels)
                or not all(isinstance(b, (int, float)) and math.isfinite(b) and abs(b) <= MAX_LOGIT_BIAS
                           for b in self.logit_bias)):
            problems.append(f"logit_bias must be one finite number in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}] "
                            f"per label ({len(self.labels)}), got {list(self.logit_bias)!r:.200}")
        names = [name for name, _ in self.heads]
        if len(self.heads) > MAX_HEADS or len(set(names)) != len(names) or any(
                not _HEAD_NAME.fullmatch(name) or name in _RESERVED_FIELDS or not 1 <= len(parts) <= MAX_LABELS
                or len(set(parts)) != len(parts) or max(map(len, parts)) > MAX_LABEL_CHARS
                for name, parts in self.heads):
            problems.append(f"heads must be at most {MAX_HEADS} distinct names of letters, digits and _ (not "
                            f"{', '.join(sorted(_RESERVED_FIELDS))}), each with 1+ distinct component names, got "
                            f"{names!r:.200}")
        if problems:
            raise ModelError(f"{origin}: contract metadata is invalid: " + "; ".join(problems))
