"""The architectures and the batch-norm fix (TensorFlow, no full training run)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from stream.errors import ConfigError  # noqa: E402
from tests.training_data import make_images  # noqa: E402
from training.model import (  # noqa: E402
    ARCHITECTURES,
    BatchNormRecalibration,
    auto_bn_momentum,
    batch_norm_layers,
    build_model,
    count_params,
    recalibrate_batch_norm,
)


def test_public_names_import() -> None:
    training = importlib.import_module("training")
    assert training.__all__ == sorted(training.__all__)
    for name in training.__all__:
        assert getattr(training, name) is not None, name


def test_recipe_is_the_original_network_at_48x48() -> None:
    model = build_model("recipe", (48, 48, 1), 7)
    assert count_params(model) == 3_624_263  # "about 3.6 M parameters"
    flatten = next(layer for layer in model.layers if isinstance(layer, keras.layers.Flatten))
    assert tuple(flatten.input.shape) == (None, 2, 2, 256)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.count("Conv2D") == 10 and kinds.count("BatchNormalization") == 8
    assert kinds.count("MaxPooling2D") == 2 and kinds.count("Dense") == 3
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.5, 0.2, 0.2]
    assert model.layers[-1].get_config()["activation"] == "softmax"


@pytest.mark.parametrize(("arch", "shape", "classes"), [
    ("recipe", (64, 64, 1), 7),     # larger input: pooled back to 2x2, same dense head
    ("recipe", (32, 32, 3), 8),     # smaller input: padded convolutions, colour
    ("recipe-small", (48, 48, 1), 7),
    ("mini-xception", (64, 64, 1), 7),
    ("mini-xception", (40, 56, 3), 5),
])
def test_architectures_build_for_any_size_and_channels(arch: str, shape: tuple[int, int, int],
                                                      classes: int) -> None:
    model = build_model(arch, shape, classes)
    assert tuple(model.input_shape) == (None, *shape)
    assert tuple(model.output_shape) == (None, classes)
    out = model.predict(np.random.default_rng(0).random((2, *shape), dtype=np.float32), verbose=0)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    if arch == "recipe":
        assert 3.6e6 < count_params(model) < 3.7e6


def test_mini_xception_matches_the_default_models_size() -> None:
    # fer's emotion_model.hdf5 (the default model in models/) has 58,423 parameters.
    assert count_params(build_model("mini-xception", (64, 64, 1), 7)) == 58_423


@pytest.mark.parametrize(("arch", "shape", "classes", "message"), [
    ("resnet-50", (48, 48, 1), 7, "unknown architecture 'resnet-50'"),
    ("recipe", (12, 12, 1), 7, "at least 16x16"),
    ("recipe", (48, 48, 2), 7, "1 or 3 channels"),
    ("recipe", (48, 48, 1), 1, "at least 2 classes"),
])
def test_bad_architecture_settings(arch: str, shape: tuple[int, int, int], classes: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(arch, shape, classes)
    assert sorted(ARCHITECTURES) == ["mini-xception", "recipe", "recipe-small", "resnet", "resnet-small"]


@pytest.mark.parametrize(("steps", "momentum"), [(1, 0.9), (44, 0.909), (100, 0.96), (449, 0.99), (5000, 0.99)])
def test_auto_momentum_spans_a_quarter_epoch(steps: int, momentum: float) -> None:
    assert auto_bn_momentum(steps) == pytest.approx(momentum, abs=1e-3)


def test_recalibration_sets_exact_inference_mode_statistics() -> None:
    model = build_model("mini-xception", (32, 32, 1), 4)
    images = np.random.default_rng(1).random((70, 32, 32, 1), dtype=np.float32)
    assert recalibrate_batch_norm(model, images, batch_size=32) == len(batch_norm_layers(model)) > 10
    # Each layer's statistics are those of its input with everything before it in inference mode.
    for bn in batch_norm_layers(model)[:3] + batch_norm_layers(model)[-2:]:
        feed = keras.Model(model.input, bn.input)
        x = np.asarray(feed.predict(images, verbose=0), dtype=np.float64).reshape(-1, bn.moving_mean.shape[0])
        np.testing.assert_allclose(bn.moving_mean.numpy(), x.mean(axis=0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(bn.moving_variance.numpy(), x.var(axis=0), rtol=1e-3, atol=1e-5)


def test_recalibration_refuses_nested_batch_norm() -> None:
    inner = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3),
                              keras.layers.BatchNormalization()])
    outer = keras.Sequential([keras.Input((16, 16, 1)), inner, keras.layers.Flatten(), keras.layers.Dense(2)])
    from stream.errors import ModelError

    with pytest.raises(ModelError, match="nested"):
        BatchNormRecalibration(outer)


def test_the_small_dataset_batch_norm_failure_and_its_fix() -> None:
    """The issue's finding, at test scale: Keras' default momentum leaves the moving
    statistics behind the weights after a few dozen steps, so inference-mode accuracy
    stays at chance while training accuracy climbs; re-estimating them fixes it."""
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    kinds = np.repeat(np.arange(7), 36)
    rng.shuffle(kinds)
    x = make_images(kinds, seed=7)[..., None].astype(np.float32) / 255.0
    y = keras.utils.to_categorical(kinds, 7)
    val_kinds = np.repeat(np.arange(7), 10)
    x_val = make_images(val_kinds, seed=8)[..., None].astype(np.float32) / 255.0
    model = build_model("recipe-small", (48, 48, 1), 7, bn_momentum=0.99)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    assert history.history["accuracy"][-1] > 0.8                        # it learned...

    def val_accuracy() -> float:
        return float(np.mean(np.argmax(model.predict(x_val, verbose=0), axis=1) == val_kinds))

    assert val_accuracy() < 0.4                                          # ...but inference mode is lost
    recalibrate_batch_norm(model, x[:512])
    assert val_accuracy() > 0.8                                          # fixed, same weights


def test_camera_augmentations_change_light_and_resolution_and_repeat_with_the_seed() -> None:
    # Brightness, contrast and down-and-up scaling run on the raw 0-255 pixels: a shrunk and
    # re-enlarged face loses its fine texture (less high-frequency energy), values stay in range,
    # and the same seed gives the same batch.
    from stream.config import TrainingConfig
    from training.trainer import _Photometric

    assert _Photometric.of(TrainingConfig()) is None
    assert _Photometric.of(TrainingConfig(low_res=1.0, augment=False)) is None
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (8, 48, 48, 1)).astype(np.float32)

    def detail(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x, axis=2)).mean())

    low = np.asarray(_Photometric(TrainingConfig(low_res=1.0, seed=3))(batch))
    assert low.shape == batch.shape and low.min() >= 0 and low.max() <= 255
    assert detail(low) < 0.8 * detail(batch)
    again = np.asarray(_Photometric(TrainingConfig(low_res=1.0, seed=3))(batch))
    np.testing.assert_array_equal(low, again)
    light = np.asarray(_Photometric(TrainingConfig(brightness=0.3, contrast=0.3, seed=3))(batch))
    assert light.shape == batch.shape and not np.allclose(light, batch)
    assert light.min() >= 0 and light.max() <= 255


def test_neutral_weight_shifts_soft_targets_and_leaves_one_hot_rows() -> None:
    from training.trainer import neutral_weighted

    labels = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
    targets = np.array([[0, 0, 0, 0.3, 0, 0, 0.7],   # soft: 3 happy, 7 neutral votes
                        [0, 0, 0, 0, 0, 0, 1.0],     # one-hot neutral
                        [0, 0, 0, 1.0, 0, 0, 0]], np.float32)
    got = neutral_weighted(targets, labels, 0.5)
    np.testing.assert_allclose(got[0, [3, 6]], [0.3 / 0.65, 0.35 / 0.65], rtol=1e-6)
    np.testing.assert_array_equal(got[1:], targets[1:])
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)
    assert neutral_weighted(targets, labels, 1.0) is targets
    assert neutral_weighted(targets, (*labels[:6], "calm"), 0.5) is targets
    from stream.config import Config

    assert Config().with_overrides({"training.neutral_weight": 0.5}).training.neutral_weight == 0.5
    with pytest.raises(ConfigError, match="neutral_weight"):
        Config().with_overrides({"training.neutral_weight": 0.0})
