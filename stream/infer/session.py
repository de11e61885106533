"""ONNX Runtime sessions: provider selection and session options in one place."""

from __future__ import annotations

import ctypes.util
import logging
import os
from pathlib import Path

import onnxruntime as ort

from stream.errors import ModelError

__all__ = ["PROVIDER_NAMES", "create_session", "resolve_providers"]

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


def create_session(path: Path, providers: tuple[str, ...], threads: int = 0, *, what: str = "model"
                   ) -> ort.InferenceSession:
    """Open an ONNX model for inference.

    Args:
        path: The ``.onnx`` file.
        providers: Config provider names in order of preference (``cuda``, ``cpu`` ...).
        threads: Intra-op threads; 0 picks :func:`auto_threads`.
        what: What the model is, for messages (``detector``, ``classifier``).

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
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as err:  # ORT raises its own untyped errors for every kind of bad file
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{what} model '{path}' could not be loaded: {first_line[:200]}") from err
    used = session.get_providers()
    if chosen[0] != used[0]:
        log.warning("%s: %s did not load, running on %s", what, chosen[0], used[0])
    log.debug("%s '%s' on %s", what, path.name, used)
    return session
