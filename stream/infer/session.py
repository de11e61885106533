"""ONNX Runtime sessions: provider selection and session options in one place."""

from __future__ import annotations

import ctypes.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from stream.errors import ModelError

__all__ = ["PROVIDER_NAMES", "BatchBuckets", "create_session", "resolve_providers", "uint8_input_graph"]

log = logging.getLogger(__name__)

#: Config names of the execution providers, in ONNX Runtime's spelling.
PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def _nvidia_driver_present() -> bool:
    # Without the driver library the CUDA provider cannot load; asking for it anyway makes
    # ONNX Runtime print a multi-line error on every CPU-only machine.
    return ctypes.util.find_library("cuda") is not None or os.path.exists("/dev/nvidiactl")


def resolve_providers(wanted: tuple[str, ...]) -> list[str]:
    """Map config names to the ONNX Runtime providers that can run here, in order.

    GPU providers are kept only when ONNX Runtime has them and an NVIDIA driver is
    present; CPU is always appended as the last resort.
    """
    available = set(ort.get_available_providers())
    gpu_ok = _nvidia_driver_present()
    chosen = []
    for name in wanted:
        provider = PROVIDER_NAMES[name]
        if provider not in available:
            log.debug("provider %s is not in this ONNX Runtime build", provider)
            continue
        if name != "cpu" and not gpu_ok:
            log.debug("provider %s skipped: no NVIDIA driver found", provider)
            continue
        chosen.append(provider)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def auto_threads() -> int:
    """Intra-op threads when the config says 0: the pipeline's other stages need cores too.

    Decoding and encoding run beside inference, so on a small machine one inference
    thread per session is fastest end to end (measured on 2 cores); bigger machines get half.
    """
    cores = os.cpu_count() or 1
    return 1 if cores <= 4 else cores // 2


def auto_inference_workers() -> int:
    """Batches analysed at once when the config says 0 (``runtime.inference_workers``) and there are
    several sources (one source: one, on the stage's own thread).

    An ONNX Runtime call releases the GIL: with two batches in flight one's model runs while the
    other's Python work (letterbox, decoding, crops) does, so a 2-core machine uses both cores
    with one intra-op thread per call; bigger machines get a quarter of their cores (at most 8).
    Measured on 2 cores (``benchmarks/RESULTS.md``, issue 18): 14 live streams went from 93 % to
    98.6 % of their frames processed, 16 held in real time; a single recorded stream is bound by
    its drawing and encoding, and a second worker only took turns with them for the GIL (-10 %).
    """
    cores = os.cpu_count() or 1
    return 2 if cores <= 4 else min(8, cores // 4)


def auto_output_workers() -> int:
    """Output threads when the config says -1 (``runtime.output_workers``): none on <= 4 cores (the
    consuming thread draws and encodes: a thread more would only take turns with it), else a
    quarter of the cores (at most 8), so many recorded streams are drawn and encoded at once."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 4 else min(8, cores // 4)


class BatchBuckets:
    """Pads every batch to a fixed size, so a GPU session never meets a new input shape mid-run.

    ONNX Runtime's CUDA convolutions are planned per input shape (cuDNN 9); a batch
    of 1..N frames or faces changes shape on nearly every call and each new shape
    re-plans (measured on an H200: 19-25 frames/s instead of 93). With buckets
    ``(1, 2, 4, 8)`` a batch of 3 runs as 4 (one zero row of padding), and warm-up
    plans all four shapes. Padding costs compute, so on the CPU provider it is off
    (``sizes`` empty: every batch runs as is).

    Args:
        sizes: Bucket sizes, ascending; a batch larger than the last is split.
    """

    def __init__(self, sizes: tuple[int, ...] = ()) -> None:
        self.sizes = tuple(sorted(set(sizes)))

    @classmethod
    def for_batch(cls, batch_size: int, enabled: bool) -> BatchBuckets:
        """Powers of two up to ``batch_size`` (and ``batch_size`` itself) when ``enabled``."""
        if not enabled:
            return cls()
        sizes = {batch_size}
        size = 1
        while size < batch_size:
            sizes.add(size)
            size *= 2
        return cls(tuple(sizes))

    def run(self, infer: Callable[[np.ndarray], list[np.ndarray]], x: np.ndarray) -> list[np.ndarray]:
        """``infer(x)`` with ``x`` padded (or split) to bucket sizes; outputs cut back to ``len(x)``."""
        n = len(x)
        if not self.sizes or n == 0:
            return infer(x)
        largest = self.sizes[-1]
        if n > largest:
            parts = [self.run(infer, x[i:i + largest]) for i in range(0, n, largest)]
            return [np.concatenate(outs) for outs in zip(*parts, strict=True)]
        size = next(s for s in self.sizes if s >= n)
        if size != n:
            x = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
        return [out[:n] for out in infer(x)]


def provider_options(chosen: list[str], options: dict[str, dict[str, str]] | None = None
                     ) -> list[tuple[str, dict[str, str]]]:
    """Providers with their options (``options``: config provider name -> ONNX Runtime options)."""
    by_name = {PROVIDER_NAMES[k]: v for k, v in (options or {}).items()}
    return [(name, dict(by_name.get(name) or {})) for name in chosen]


_PRELOADED = False


def _preload_gpu_libraries() -> None:
    """``onnxruntime-gpu[cuda,cudnn]`` ships CUDA and cuDNN as pip packages; this makes them findable."""
    global _PRELOADED
    preload = getattr(ort, "preload_dlls", None)
    if _PRELOADED or preload is None:
        return
    _PRELOADED = True
    try:
        preload()
    except Exception as err:  # a machine with a system CUDA still works; say why if it does not
        log.debug("onnxruntime.preload_dlls() failed: %s", err)


def uint8_input_graph(path: Path, scale: float, offset: float) -> bytes:
    """The model at ``path`` taking uint8 instead of float: ``Cast -> Mul(scale) -> Add(offset)`` in front.

    The host then sends 4x fewer bytes (to a GPU) and skips its own float conversion;
    ``x * scale + offset`` is what the NumPy path computes, so results agree to float rounding.
    Needs the ``onnx`` package (the ``gpu`` extra brings it).
    """
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError as err:
        raise ModelError("runtime.uint8_input needs the 'onnx' package: pip install 'emostream[gpu]' or "
                         "set runtime.uint8_input: off") from err
    model = onnx.load(str(path))
    graph = model.graph
    initialized = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialized]
    if len(inputs) == 1 and inputs[0].type.tensor_type.elem_type == TensorProto.UINT8:
        return model.SerializeToString()  # takes uint8 already (the shipped detectors)
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ModelError(f"model '{path}': uint8 input needs one float input")
    name = inputs[0].name
    raw = f"{name}__uint8"
    graph.initializer.extend([helper.make_tensor(f"{name}__scale", TensorProto.FLOAT, [], [scale]),
                              helper.make_tensor(f"{name}__offset", TensorProto.FLOAT, [], [offset])])
    nodes = [
        helper.make_node("Cast", [raw], [f"{name}__float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{name}__float", f"{name}__scale"], [f"{name}__scaled"]),
        helper.make_node("Add", [f"{name}__scaled", f"{name}__offset"], [name]),
    ]
    for k, node in enumerate(nodes):
        graph.node.insert(k, node)
    inputs[0].name = raw
    inputs[0].type.tensor_type.elem_type = TensorProto.UINT8
    return model.SerializeToString()


def create_session(path: Path, providers: tuple[str, ...], threads: int = 0, *, what: str = "model",
                   provider_opts: dict[str, dict[str, str]] | None = None,
                   uint8_normalize: tuple[float, float] | None = None) -> ort.InferenceSession:
    """Open an ONNX model for inference.

    Args:
        path: The ``.onnx`` file.
        providers: Config provider names in order of preference (``cuda``, ``cpu`` ...).
        threads: Intra-op threads; 0 picks :func:`auto_threads`.
        what: What the model is, for messages (``detector``, ``classifier``).
        provider_opts: Options per provider (``{"cuda": {"cudnn_conv_algo_search": "DEFAULT"},
            "tensorrt": {...}}``), applied to the ones used.
        uint8_normalize: ``(scale, offset)``: feed uint8 and normalise inside the graph
            (:func:`uint8_input_graph`); None: the model as it is.

    Raises:
        ModelError: The file is missing or not a loadable ONNX model.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{what} model '{path}' could not be loaded: no such file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or auto_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads burn the cores that decoding and encoding need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    chosen = resolve_providers(providers)
    if chosen[0] != "CPUExecutionProvider":
        _preload_gpu_libraries()
    try:
        model = str(path) if uint8_normalize is None else uint8_input_graph(path, *uint8_normalize)
        session = ort.InferenceSession(model, sess_options=options,
                                       providers=provider_options(chosen, provider_opts))
    except Exception as err:  # ORT raises its own untyped errors for every kind of bad file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{what} model '{path}' could not be loaded: {first_line[:200]}") from err
    used = session.get_providers()
    if chosen[0] != used[0]:
        log.warning("%s: %s did not load, running on %s", what, chosen[0], used[0])
    log.debug("%s '%s' on %s", what, path.name, used)
    return session
