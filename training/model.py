"""The emotion CNN architectures, and the batch-normalisation fix.

Architectures (:data:`ARCHITECTURES`):

``recipe`` (default)
    The project's original Keras CNN: conv 64-64 with batch norm and dropout
    0.5; conv 64-64, max-pool; conv 128-128 with batch norm, twice, then
    max-pool; conv 256-256 with batch norm; flatten; dense 1024, dropout 0.2,
    dense 1024, dropout 0.2; softmax. 3x3 ``valid`` convolutions with ReLU,
    each batch norm after its convolution. At 48x48x1 with 7 classes it has
    3,624,263 parameters and the last feature map is 2x2x256, exactly as
    trained originally. Other input sizes: below 46 px the convolutions pad
    (``same``) so the map does not vanish; when the last map is larger than
    3x3 an average pooling brings it back to about 2x2, so the dense head
    (and the parameter count) stays that of the recipe.
``recipe-small``
    The same graph at a quarter of the width (16-16, 16-16, 32 x 4, 64-64,
    dense 256): about 0.1 M parameters, for tests and quick experiments.
``resnet`` / ``resnet-small``
    A ResNet-18-like network of basic blocks, two per stage, widths
    32-64-128-256 (``resnet``, 2.8 M parameters) or 24-48-96-192; global average pooling.
``mini-xception``
    The mini-Xception of Arriaga et al. (the network behind the default
    model in ``models/``): 4 residual depthwise-separable modules, global
    average pooling; any input size.

Batch normalisation on small datasets
-------------------------------------
Keras updates a batch-norm layer's moving mean and variance with momentum
0.99, so they average roughly the last 100 training steps, of weights that
kept changing during those steps. A few hundred steps (a user's small
dataset, a short fine-tune) leave them far from the statistics of the final
weights, and every inference-mode score (validation, test, the exported
model) is then wrong: the recipe trained on 2,800 images reached 95 % training
but 20 % validation accuracy. Dropout adds a second, smaller shift: during
training the layers after a dropout see its rescaled, noisier activations;
at inference they see the clean ones.

The fix chosen here is *re-estimation* (:func:`recalibrate_batch_norm`):
before every validation, and so before every checkpoint and export, each
batch-norm layer's moving statistics are replaced by the exact mean and
variance of its input over 512 un-augmented training images (the
``bn_recalibration_samples`` setting), with the model in inference mode and
the layers before it already re-estimated. The statistics then belong to the
weights being evaluated, whatever the dataset size or step count, and they
are measured with dropout off, as the model will run. It costs one partial
forward pass over those images per batch-norm layer: about 11 s per epoch
for the recipe on 2 CPU cores, 3 % of a full FER2013 epoch (more, in share,
on a small dataset: ~1 s per 2 s epoch for ``recipe-small`` on 252 images).

Measured at test scale (``recipe-small``, 252 synthetic images, 8 epochs of
8 steps): with momentum 0.99 and no re-estimation, 96 % training but 14-24 %
validation accuracy; momentum ``auto`` (0.9 there) alone caught up only at
epoch 8; re-estimation gave the right validation accuracy from epoch 1 and
97-99 % at the end. ``tests/test_training_model.py`` keeps the failure and
its fix as a test.

Tying the momentum to the number of steps is kept as a fallback for models
whose batch-norm layers cannot be reached from the top-level graph (nested
sub-models) or when re-estimation is switched off: ``bn_momentum: auto``
picks ``1 - 4 / steps_per_epoch`` clipped to [0.9, 0.99], so the moving
averages span about a quarter of an epoch (:func:`auto_bn_momentum`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import keras
import numpy as np
from keras import layers

from stream.errors import ConfigError, ModelError

__all__ = [
    "ARCHITECTURES",
    "BatchNormRecalibration",
    "auto_bn_momentum",
    "batch_norm_layers",
    "build_model",
    "count_params",
    "recalibrate_batch_norm",
]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class _RecipeWidths:
    block1: int
    block2: int
    block3: int
    block4: int
    dense: int


_RECIPE = _RecipeWidths(block1=64, block2=64, block3=128, block4=256, dense=1024)
_RECIPE_SMALL = _RecipeWidths(block1=16, block2=16, block3=32, block4=64, dense=256)


def _recipe(widths: _RecipeWidths) -> Callable[[tuple[int, int, int], int, float, str], keras.Model]:
    def build(input_shape: tuple[int, int, int], n_classes: int, bn_momentum: float, name: str) -> keras.Model:
        height, width, _ = input_shape
        # Valid 3x3 convolutions shrink the map by 2 each: 8 of them and 2 pools
        # take 48 px to 2 px. Smaller inputs would vanish, so they pad instead.
        padding = "valid" if min(height, width) >= 46 else "same"

        def conv(x: keras.KerasTensor, filters: int, bn: bool) -> keras.KerasTensor:
            x = layers.Conv2D(filters, 3, padding=padding, activation="relu")(x)
            if bn:
                x = layers.BatchNormalization(momentum=bn_momentum)(x)
            return x

        inputs = keras.Input(shape=input_shape, name="input")
        x = conv(inputs, widths.block1, bn=True)
        x = conv(x, widths.block1, bn=True)
        x = layers.Dropout(0.5)(x)
        x = conv(x, widths.block2, bn=False)
        x = conv(x, widths.block2, bn=False)
        x = layers.MaxPooling2D(2)(x)
        for _ in range(4):
            x = conv(x, widths.block3, bn=True)
        x = layers.MaxPooling2D(2)(x)
        x = conv(x, widths.block4, bn=True)
        x = conv(x, widths.block4, bn=True)
        side = min(int(x.shape[1]), int(x.shape[2]))
        if side > 3:
            x = layers.AveragePooling2D(side // 2)(x)
        x = layers.Flatten()(x)
        for _ in range(2):
            x = layers.Dense(widths.dense, activation="relu")(x)
            x = layers.Dropout(0.2)(x)
        outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
        return keras.Model(inputs, outputs, name=name)

    return build


def _mini_xception(
    input_shape: tuple[int, int, int], n_classes: int, bn_momentum: float, name: str
) -> keras.Model:
    reg = keras.regularizers.L2(0.01)

    def bn(x: keras.KerasTensor) -> keras.KerasTensor:
        return layers.BatchNormalization(momentum=bn_momentum)(x)

    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    for _ in range(2):
        x = layers.Conv2D(8, 3, kernel_regularizer=reg, use_bias=False)(x)
        x = layers.Activation("relu")(bn(x))
    for filters in (16, 32, 64, 128):
        residual = bn(layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=False)(x))
        x = layers.SeparableConv2D(filters, 3, padding="same", depthwise_regularizer=reg,
                                   pointwise_regularizer=reg, use_bias=False)(x)
        x = layers.Activation("relu")(bn(x))
        x = layers.SeparableConv2D(filters, 3, padding="same", depthwise_regularizer=reg,
                                   pointwise_regularizer=reg, use_bias=False)(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(bn(x))
        x = layers.Add()([x, residual])
    x = layers.Conv2D(n_classes, 3, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Activation("softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def _resnet(widths: tuple[int, ...]) -> Callable[[tuple[int, int, int], int, float, str], keras.Model]:
    """A small pre-activation-free ResNet for face crops (He et al. 2016, basic blocks).

    Stem: 3x3 conv at full resolution, then a 2x2 max-pool. Then one stage per
    width, two basic blocks each (3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut),
    every stage after the first starting with stride 2. Global average pooling,
    dropout 0.3, softmax. At 48x48 the last map is 3x3.
    """

    def build(input_shape: tuple[int, int, int], n_classes: int, bn_momentum: float, name: str) -> keras.Model:
        reg = keras.regularizers.L2(5e-5)

        def conv_bn(x: keras.KerasTensor, filters: int, stride: int = 1, relu: bool = True) -> keras.KerasTensor:
            x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg)(x)
            x = layers.BatchNormalization(momentum=bn_momentum)(x)
            return layers.Activation("relu")(x) if relu else x

        inputs = keras.Input(shape=input_shape, name="input")
        x = conv_bn(inputs, widths[0])
        x = layers.MaxPooling2D(2)(x)
        for stage, filters in enumerate(widths):
            for block in range(2):
                stride = 2 if stage > 0 and block == 0 else 1
                shortcut = x
                if stride != 1 or int(x.shape[-1]) != filters:
                    shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, kernel_regularizer=reg)(x)
                    shortcut = layers.BatchNormalization(momentum=bn_momentum)(shortcut)
                y = conv_bn(x, filters, stride)
                y = conv_bn(y, filters, relu=False)
                x = layers.Activation("relu")(layers.Add()([y, shortcut]))
        x = layers.GlobalAveragePooling2D()(x)
        x = layers.Dropout(0.3)(x)
        outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
        return keras.Model(inputs, outputs, name=name)

    return build


#: Architecture name -> builder ``(input_shape_hwc, n_classes, bn_momentum, name) -> Model``.
ARCHITECTURES: dict[str, Callable[[tuple[int, int, int], int, float, str], keras.Model]] = {
    "mini-xception": _mini_xception,
    "recipe": _recipe(_RECIPE),
    "recipe-small": _recipe(_RECIPE_SMALL),
    "resnet": _resnet((32, 64, 128, 256)),
    "resnet-small": _resnet((24, 48, 96, 192)),
}


def build_model(
    arch: str, input_shape: tuple[int, int, int], n_classes: int, *, bn_momentum: float = 0.99
) -> keras.Model:
    """Build an untrained classifier with a softmax output.

    Args:
        arch: A key of :data:`ARCHITECTURES`.
        input_shape: ``(height, width, channels)``; channels 1 (gray) or 3.
        n_classes: Number of output classes.
        bn_momentum: Momentum of every batch-norm layer's moving averages.

    Returns:
        A functional Keras model, input NHWC float32, output ``(N, n_classes)``.

    Raises:
        ConfigError: Unknown architecture or impossible shape.
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(f"arch: unknown architecture {arch!r} (known: {', '.join(sorted(ARCHITECTURES))})")
    height, width, channels = input_shape
    if min(height, width) < 16 or channels not in (1, 3):
        raise ConfigError(f"input shape must be at least 16x16 with 1 or 3 channels, got {input_shape}")
    if n_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {n_classes}")
    return ARCHITECTURES[arch]((height, width, channels), n_classes, bn_momentum, arch.replace("-", "_"))


def count_params(model: keras.Model) -> int:
    """Total number of parameters (trainable and not)."""
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


def auto_bn_momentum(steps_per_epoch: int) -> float:
    """Momentum whose moving averages span about a quarter of an epoch.

    ``1 - 4 / steps_per_epoch`` clipped to [0.9, 0.99]: Keras' 0.99 for full
    FER2013 (449 steps of 64), 0.9 for a few thousand images.
    """
    return float(np.clip(1.0 - 4.0 / max(steps_per_epoch, 1), 0.9, 0.99))


def batch_norm_layers(model: keras.Model) -> list[layers.BatchNormalization]:
    """Every batch-norm layer of ``model``, nested sub-models included, in graph order."""
    found: list[layers.BatchNormalization] = []

    def walk(layer_list: Iterable[keras.layers.Layer]) -> None:
        for layer in layer_list:
            if isinstance(layer, layers.BatchNormalization):
                found.append(layer)
            elif hasattr(layer, "layers"):
                walk(layer.layers)

    walk(model.layers)
    return found


class BatchNormRecalibration:
    """Re-estimates a model's batch-norm statistics in inference mode.

    Build it once per model (it builds one probe sub-model per batch-norm
    layer, sharing the model's weights) and call :meth:`run` whenever the
    weights changed.

    Args:
        model: A functional Keras model whose batch-norm layers are all at its top level.

    Raises:
        ModelError: A batch-norm layer sits inside a nested model, or has no single input.
    """

    def __init__(self, model: keras.Model) -> None:
        top = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
        if len(top) != len(batch_norm_layers(model)):
            raise ModelError(f"model '{model.name}': batch-norm layers inside nested models cannot be re-estimated")
        self.model = model
        self.layers = top
        self._probes: list[keras.Model] = []
        for bn in top:
            try:
                x = bn.input
            except (AttributeError, ValueError) as err:
                raise ModelError(f"model '{model.name}': batch-norm layer '{bn.name}' has no single input") from err
            axis = bn.axis if bn.axis >= 0 else len(x.shape) + bn.axis
            reduce = tuple(i for i in range(1, len(x.shape)) if i != axis)
            # Per-image mean and variance over the spatial axes: small outputs,
            # combined exactly (law of total variance) in float64 afterwards.
            mean = keras.ops.mean(x, axis=reduce)
            var = keras.ops.var(x, axis=reduce)
            self._probes.append(keras.Model(model.input, [mean, var], name=f"probe_{bn.name}"))

    def run(self, images: np.ndarray, *, batch_size: int = 128) -> None:
        """Replace every batch-norm layer's moving mean and variance.

        Args:
            images: Model-ready inputs (normalised float32, NHWC), un-augmented.
            batch_size: Images per forward pass.
        """
        if len(images) == 0:
            return
        for bn, probe in zip(self.layers, self._probes, strict=True):
            # Eager calls: probes are used a few times per run, and tracing one
            # predict function per batch-norm layer costs more than it saves.
            parts = [probe(images[i:i + batch_size], training=False) for i in range(0, len(images), batch_size)]
            means = np.concatenate([keras.ops.convert_to_numpy(m) for m, _ in parts]).astype(np.float64)
            variances = np.concatenate([keras.ops.convert_to_numpy(v) for _, v in parts]).astype(np.float64)
            mean = means.mean(axis=0)
            variance = variances.mean(axis=0) + means.var(axis=0)
            bn.moving_mean.assign(mean.astype(np.float32))
            bn.moving_variance.assign(variance.astype(np.float32))


def recalibrate_batch_norm(model: keras.Model, images: np.ndarray, *, batch_size: int = 128) -> int:
    """One-off re-estimation of ``model``'s batch-norm statistics (see the module docstring).

    Args:
        model: A functional Keras model.
        images: Model-ready, un-augmented training inputs (a few thousand are plenty).
        batch_size: Images per forward pass.

    Returns:
        The number of batch-norm layers re-estimated.

    Raises:
        ModelError: The model's batch-norm layers cannot be reached (see :class:`BatchNormRecalibration`).
    """
    recal = BatchNormRecalibration(model)
    recal.run(images, batch_size=batch_size)
    return len(recal.layers)
