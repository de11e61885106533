"""Keras classifier -> ONNX for the stream, with the contract and a parity check.

:func:`export_keras` converts any Keras 3 classifier (a ``.keras`` or ``.h5``
file, or a model object) with tf2onnx, gives the input and output a dynamic
batch axis named ``batch``, writes the :class:`~stream.contract.ModelContract`
JSON into the ONNX ``metadata_props`` under :data:`~stream.contract.CONTRACT_KEY`
(exactly where the stream reads it), and checks the ONNX model against Keras
on real face crops before the file is put in place.

Parity inputs are required, and must be real images: random tensors exercise
a network far from where its activations live (after batch norm and ReLU
most of them saturate or die), so a conversion bug in, say, a padding mode
can pass on noise and fail on faces. ``emostream train`` passes test-split
images; the models build script passes face crops from a real clip; the
``export`` command takes ``--parity-images`` or the ``parity_images.npy`` a
training run leaves next to its model.

The export fails (:class:`~stream.errors.ModelError`, no file written) when
the largest absolute difference between Keras and ONNX probabilities exceeds
``atol``. Argmax agreement is reported too; below ``atol`` a disagreement can
only be a near-tie between two classes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stream.contract import FER2013_LABELS, ModelContract
from stream.errors import ModelError, OutputError
from stream.render.outputs import write_output
from training.data import Color, prepare_images

if TYPE_CHECKING:
    import keras

__all__ = [
    "ExportReport",
    "contract_for_keras",
    "export_keras",
    "load_keras_model",
    "read_contract",
    "read_sidecar_contract",
    "sidecar_path",
    "write_sidecar_contract",
]

log = logging.getLogger(__name__)

#: Largest accepted |Keras - ONNX| on any output value.
DEFAULT_ATOL = 1e-4


@dataclass(frozen=True)
class ExportReport:
    """What an export produced and how closely ONNX matched Keras.

    Attributes:
        path: The ONNX file written.
        max_abs_diff: Largest ``|keras - onnx|`` over all parity outputs.
        argmax_agreement: Share of parity images with the same top class.
        n_samples: Number of parity images.
        opset: ONNX opset of the file.
        contract: The contract written into the file.
    """

    path: Path
    max_abs_diff: float
    argmax_agreement: float
    n_samples: int
    opset: int
    contract: ModelContract

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "path": str(self.path),
            "max_abs_diff": self.max_abs_diff,
            "argmax_agreement": self.argmax_agreement,
            "n_samples": self.n_samples,
            "opset": self.opset,
            "contract": json.loads(self.contract.to_json()),
        }


def load_keras_model(path: Path) -> keras.Model:
    """Load a ``.keras`` or ``.h5`` model for inference (not compiled).

    Raises:
        ModelError: The file is missing or not a Keras model.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model '{path}' does not exist")
    if path.suffix.lower() not in (".keras", ".h5", ".hdf5"):
        raise ModelError(f"model '{path}': expected a .keras or .h5 file")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises many types for a bad file
        raise ModelError(f"model '{path}' could not be loaded: {str(err).splitlines()[0]}") from err


def sidecar_path(model_path: Path) -> Path:
    """Where the contract of a Keras model file is kept: ``<stem>.contract.json`` beside it."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}.contract.json")


def write_sidecar_contract(model_path: Path, contract: ModelContract) -> Path:
    """Write ``contract`` beside a Keras model file; returns the path written."""
    path = sidecar_path(model_path)
    path.write_text(contract.to_json() + "\n", encoding="utf-8")
    return path


def read_sidecar_contract(model_path: Path) -> ModelContract | None:
    """The contract kept beside a Keras model file, or None when there is none.

    Raises:
        ModelError: The file exists but is invalid.
    """
    path = sidecar_path(model_path)
    if not path.is_file():
        return None
    return ModelContract.from_json(path.read_text(encoding="utf-8"), origin=str(path))


def read_contract(onnx_path: Path) -> ModelContract:
    """Read the contract from an ONNX file's metadata, as the stream does.

    Raises:
        ModelError: The file is unreadable or carries no valid contract.
    """
    import onnx

    try:
        proto = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError...
        raise ModelError(f"model '{onnx_path}' could not be read as ONNX: {err}") from err
    return ModelContract.from_proto(proto, origin=f"model '{onnx_path}'")


def contract_for_keras(
    model: keras.Model,
    *,
    labels: tuple[str, ...] | None = None,
    color: Color | None = None,
    normalize: tuple[float, float] | None = None,
    crop_margin: float = 0.0,
    output: str | None = None,
    origin: str = "model",
) -> ModelContract:
    """Derive a contract for a Keras classifier, filling gaps from its shapes.

    Args:
        model: A classifier with input ``(None, H, W, C)`` and output ``(None, K)``.
        labels: Output names; default FER2013's order when K is 7.
        color: Default ``gray`` for 1 channel, ``rgb`` for 3.
        normalize: ``(scale, offset)``; default ``(1/255, 0)``.
        crop_margin: Face crop margin the stream applies.
        output: ``probabilities`` or ``logits``; default from the last layer's activation.
        origin: Name for messages.

    Raises:
        ModelError: The shapes are not those of an NHWC image classifier, or
            labels are missing or do not match the output.
    """
    in_shape = tuple(model.input_shape) if not isinstance(model.input_shape, list) else None
    out_shape = tuple(model.output_shape) if not isinstance(model.output_shape, list) else None
    if in_shape is None or len(in_shape) != 4 or out_shape is None or len(out_shape) != 2:
        raise ModelError(f"{origin}: expected one input (N, H, W, C) and one output (N, classes), "
                         f"got {model.input_shape} -> {model.output_shape}")
    _, height, width, channels = in_shape
    if height is None or width is None or channels not in (1, 3):
        raise ModelError(f"{origin}: input must have a fixed size and 1 or 3 channels (NHWC), got {in_shape}")
    n_out = int(out_shape[1])
    if labels is None:
        if n_out != len(FER2013_LABELS):
            raise ModelError(f"{origin}: {n_out} outputs; give the labels (--labels a,b,...)")
        labels = FER2013_LABELS
    if len(labels) != n_out:
        raise ModelError(f"{origin}: {len(labels)} labels given but the model has {n_out} outputs")
    if color is None:
        color = "gray" if channels == 1 else "rgb"
    if (channels == 1) != (color == "gray"):
        raise ModelError(f"{origin}: color {color!r} does not fit a {channels}-channel input")
    scale, offset = normalize if normalize is not None else (1.0 / 255.0, 0.0)
    if output is None:
        last = model.layers[-1]
        activation = getattr(last, "activation", None)
        output = "probabilities" if getattr(activation, "__name__", "") == "softmax" else "logits"
    contract = ModelContract(
        labels=tuple(labels),
        input_size_wh=(int(width), int(height)),
        color=color,
        layout="NHWC",
        normalize_scale=float(scale),
        normalize_offset=float(offset),
        crop_margin=float(crop_margin),
        output=output,  # type: ignore[arg-type]
    )
    contract.validate(origin)
    return contract


def export_keras(
    model_or_path: keras.Model | Path | str,
    out_path: Path,
    contract: ModelContract,
    *,
    parity_inputs: np.ndarray,
    parity_color: Color | None = None,
    opset: int = 17,
    atol: float = DEFAULT_ATOL,
) -> ExportReport:
    """Convert a Keras classifier to ONNX with the contract in its metadata.

    Args:
        model_or_path: A Keras model, or a ``.keras`` / ``.h5`` file.
        out_path: The ONNX file to write (replaced only when parity passes).
        contract: Labels, input size, colour, normalisation... (see
            :func:`contract_for_keras` to derive one). Layout must be NHWC.
        parity_inputs: Real uint8 face crops ``(N, H, W)`` or ``(N, H, W, C)``,
            any size (``stream.infer.classify.crop_faces`` output fits); they are
            resized, converted and normalised with ``contract`` as the stream would.
        parity_color: Colour order of 3-channel ``parity_inputs``; default the contract's
            colour (what ``crop_faces`` returns).
        opset: ONNX opset (17 or newer).
        atol: Largest accepted ``|keras - onnx|``.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ModelError: The model does not fit the contract, conversion fails, or
            parity fails.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    model = load_keras_model(Path(model_or_path)) if isinstance(model_or_path, (str, Path)) else model_or_path
    origin = str(model_or_path) if isinstance(model_or_path, (str, Path)) else f"model '{model.name}'"
    out_path = Path(out_path)
    contract.validate(origin)
    if opset < 17:
        raise ModelError(f"{origin}: opset must be >= 17, got {opset}")
    if contract.layout != "NHWC":
        raise ModelError(f"{origin}: Keras models export as NHWC; the contract says {contract.layout}")
    expected_in = (None, *contract.input_shape())
    if tuple(model.input_shape) != expected_in:
        raise ModelError(f"{origin}: input shape {tuple(model.input_shape)} does not match the contract's "
                         f"{expected_in} (size {list(contract.input_size_wh)}, color {contract.color})")
    if tuple(model.output_shape) != (None, len(contract.labels)):
        raise ModelError(f"{origin}: output shape {tuple(model.output_shape)} does not match the "
                         f"{len(contract.labels)} labels {list(contract.labels)}")
    parity_inputs = np.asarray(parity_inputs)
    if parity_inputs.dtype != np.uint8 or len(parity_inputs) == 0:
        raise ModelError(f"{origin}: parity inputs must be a non-empty uint8 array of face crops, "
                         f"got {parity_inputs.dtype} {parity_inputs.shape}")
    source_color: Color = parity_color or ("bgr" if contract.color == "gray" else contract.color)
    x = prepare_images(parity_inputs, contract, source_color=source_color)
    keras_out = np.asarray(model.predict(x, batch_size=64, verbose=0), dtype=np.float32)
    if contract.output == "probabilities":
        sums = keras_out.sum(axis=1)
        if np.any(keras_out < -1e-6) or np.max(np.abs(sums - 1.0)) > 1e-3:
            raise ModelError(f"{origin}: contract says output 'probabilities' but the outputs do not sum to 1 "
                             f"(e.g. {float(sums[0]):.3f}); use output 'logits'")

    spec = (tf.TensorSpec((None, *contract.input_shape()), tf.float32, name="input"),)
    # Converting a tf.function of the model in inference mode (rather than
    # tf2onnx's from_keras) works for functional, Sequential and subclassed
    # Keras 3 models alike, and pins dropout off and batch norm to its moving
    # statistics in the graph.
    inference = tf.function(lambda x: model(x, training=False), input_signature=spec)
    try:
        proto, _ = tf2onnx.convert.from_function(inference, input_signature=spec, opset=opset)
    except Exception as err:  # tf2onnx raises anything from its converters
        raise ModelError(f"{origin}: ONNX conversion failed: {str(err).splitlines()[0]}") from err
    if len(proto.graph.input) != 1 or len(proto.graph.output) != 1:
        raise ModelError(f"{origin}: the ONNX graph has {len(proto.graph.input)} inputs and "
                         f"{len(proto.graph.output)} outputs; the stream needs one of each")
    _rename_output(proto.graph, contract.output)
    for value in (proto.graph.input[0], proto.graph.output[0]):
        batch_dim = value.type.tensor_type.shape.dim[0]
        batch_dim.ClearField("dim_value")
        batch_dim.dim_param = "batch"
    contract.write_to(proto, keep_others=False)
    proto.producer_name = "emostream.training"
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as err:
        raise ModelError(f"{origin}: the converted ONNX model is invalid: {str(err).splitlines()[0]}") from err

    onnx_out, onnx_single = _run_onnx(proto.SerializeToString(), x)
    if onnx_out.shape != keras_out.shape:
        raise ModelError(f"{origin}: ONNX output shape {onnx_out.shape} differs from Keras {keras_out.shape}")
    max_abs_diff = float(np.max(np.abs(onnx_out - keras_out)))
    single_diff = float(np.max(np.abs(onnx_single - onnx_out[:1])))
    agreement = float(np.mean(np.argmax(onnx_out, axis=1) == np.argmax(keras_out, axis=1)))
    log.info("parity on %d images: max |keras - onnx| %.2e, argmax agreement %.1f%%",
             len(x), max_abs_diff, 100 * agreement)
    if max_abs_diff > atol or single_diff > atol or not np.all(np.isfinite(onnx_out)):
        raise ModelError(f"{origin}: ONNX parity failed on {len(x)} images: max |keras - onnx| "
                         f"{max(max_abs_diff, single_diff):.3g} > {atol:g}, argmax agreement {100 * agreement:.1f}%")

    save_onnx(proto, out_path)
    return ExportReport(out_path, max_abs_diff, agreement, len(x), opset, contract)


def save_onnx(proto: Any, out_path: Path) -> None:
    """Write an ONNX model under a temporary name in the target folder, then rename: never half-written
    (:func:`stream.render.outputs.write_output`).

    Raises:
        ModelError: ``out_path`` cannot be written.
    """
    try:
        write_output(out_path, proto.SerializeToString(), "model")
    except OutputError as err:
        raise ModelError(str(err)) from err


def _rename_output(graph: Any, name: str) -> None:
    """Give the single graph output a readable name (tf2onnx calls it ``Identity:0``)."""
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [name if o == old else o for o in node.output]
        node.input[:] = [name if i == old else i for i in node.input]
    graph.output[0].name = name


def _run_onnx(model_bytes: bytes, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run the whole batch and, separately, batch 1 (checks the dynamic batch axis)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    full = session.run(None, {name: x})[0]
    single = session.run(None, {name: x[:1]})[0]
    return np.asarray(full, dtype=np.float32), np.asarray(single, dtype=np.float32)
