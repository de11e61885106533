"""Train a classifier, choose its checkpoint on validation, test it, export it.

:func:`train` runs the whole recipe into a run folder:

``model.keras``
    The checkpoint with the best validation accuracy, ties broken by the
    lower validation loss (batch-norm statistics re-estimated, see
    :mod:`training.model`), with ``model.contract.json`` beside it.
``model.onnx``
    The same model for ``emostream run --model``, contract in its metadata,
    parity-checked against Keras on test images (``parity_images.npy``).
``report.json``, ``confusion_matrix.png``
    Test-split scores of that checkpoint (:mod:`training.evaluate`), plus the
    validation scores, the training settings and the export parity.
``history.csv``, ``history.png``
    Loss, accuracy and learning rate per epoch.

The checkpoint, early stopping and learning-rate reduction only ever look at
the validation split (FER2013 ``PublicTest``); the test split
(``PrivateTest``) is scored once, at the end.

Loss is categorical cross-entropy on the softmax output (one-hot or vote
targets); augmentation (rotation, shifts, zoom, horizontal flip; brightness,
contrast and down-and-up scaling on the raw pixels when configured) runs as Keras
preprocessing layers in the ``tf.data`` input pipeline, so the saved model
holds no augmentation layers. Class weights (optional) are the "balanced"
``n / (k * count)`` weights, applied as per-image sample weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from stream.config import TrainingConfig
from stream.contract import ModelContract
from stream.errors import ConfigError, DataError, ModelError, OutputError
from stream.render.outputs import OutputGroup
from training.data import Dataset, Split, convert_images
from training.evaluate import (
    EvaluationReport,
    KerasPredictor,
    evaluate_model,
    plot_history,
    write_report,
)
from training.export import ExportReport, export_keras, write_sidecar_contract
from training.model import (
    BatchNormRecalibration,
    auto_bn_momentum,
    batch_norm_layers,
    build_model,
    count_params,
)

__all__ = ["EpochProgress", "TrainResult", "class_weights", "neutral_weighted", "train"]

log = logging.getLogger(__name__)

#: Number of test images the ONNX export is checked on (and kept as ``parity_images.npy``).
PARITY_IMAGES = 64
_MIN_LEARNING_RATE = 1e-6
_REDUCE_LR_FACTOR = 0.5


@dataclass(frozen=True)
class EpochProgress:
    """What one finished epoch reports.

    Attributes:
        epoch: 1-based epoch number.
        epochs: Planned number of epochs.
        loss: Training loss (on augmented images, dropout on).
        accuracy: Training accuracy (same conditions).
        val_loss: Validation loss, inference mode.
        val_accuracy: Validation accuracy, inference mode.
        learning_rate: Learning rate used in this epoch.
        seconds: Wall time of the epoch, validation included.
        best: Whether this epoch is the best so far (checkpoint written).
    """

    epoch: int
    epochs: int
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    seconds: float
    best: bool

    def line(self) -> str:
        """One human-readable line."""
        mark = "  *best" if self.best else ""
        return (f"epoch {self.epoch}/{self.epochs}  loss {self.loss:.4f}  acc {100 * self.accuracy:.2f}%  "
                f"val_loss {self.val_loss:.4f}  val_acc {100 * self.val_accuracy:.2f}%  "
                f"lr {self.learning_rate:.2g}  {self.seconds:.0f}s{mark}")


@dataclass(frozen=True)
class TrainResult:
    """Where a run left its files and how it scored.

    Attributes:
        run_dir: The run folder.
        model_path: ``model.keras`` (best validation checkpoint).
        onnx_path: ``model.onnx``.
        test: Scores of the checkpoint on the test split.
        validation: Scores of the checkpoint on the validation split.
        export: Parity of the ONNX export.
        epochs_run: Epochs actually run (early stopping may cut them short).
        best_epoch: 1-based epoch of the checkpoint.
        seconds_per_epoch: Mean wall time per epoch.
    """

    run_dir: Path
    model_path: Path
    onnx_path: Path
    test: EvaluationReport
    validation: EvaluationReport
    export: ExportReport
    epochs_run: int
    best_epoch: int
    seconds_per_epoch: float


def neutral_weighted(targets: np.ndarray, labels: Sequence[str], weight: float) -> np.ndarray:
    """Soft targets with the ``neutral`` share counted ``weight`` times, renormalised
    (``training.neutral_weight``): a face that 3 of 10 annotators saw as happy and 7 as neutral
    becomes 46 % happy at 0.5 instead of 30 %. One-hot rows are unchanged; so is a set without
    ``neutral``."""
    if weight == 1.0 or "neutral" not in labels or not len(targets):
        return targets
    out = targets.astype(np.float32, copy=True)
    out[:, list(labels).index("neutral")] *= weight
    return out / out.sum(axis=1, keepdims=True)


def class_weights(split: Split, n_labels: int) -> np.ndarray:
    """Balanced class weights ``n / (k * count_c)`` from the hard labels of ``split``."""
    counts = split.class_counts(n_labels).astype(np.float64)
    weights = np.zeros(n_labels)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


class _Recalibrate(keras.callbacks.Callback):
    """Re-estimates batch-norm statistics right before each validation inside ``fit``."""

    def __init__(self, recal: BatchNormRecalibration, images: np.ndarray) -> None:
        super().__init__()
        self.recal = recal
        self.images = images
        self.seconds = 0.0
        self._fitting = False

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._fitting = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._fitting = False

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._fitting:
            start = time.perf_counter()
            self.recal.run(self.images)
            self.seconds += time.perf_counter() - start


class _BestCheckpoint(keras.callbacks.Callback):
    """Saves the model when validation accuracy improves, or ties with a lower validation loss.

    Accuracy alone freezes on the first epoch that reaches a plateau (often
    100 % on small validation sets); the loss then still tells better from worse.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self.best: tuple[float, float] = (-math.inf, -math.inf)
        self.best_epoch = 0
        self.improved = False

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        key = (float(logs.get("val_accuracy", math.nan)), -float(logs.get("val_loss", math.nan)))
        self.improved = all(math.isfinite(v) for v in key) and key > self.best
        if self.improved:
            self.best, self.best_epoch = key, epoch + 1
            self.model.save(self.path, overwrite=True)


class _Progress(keras.callbacks.Callback):
    """One line per epoch, and a step bar on a terminal."""

    def __init__(self, epochs: int, steps: int, report: Callable[[EpochProgress], None],
                 step_bar: bool, checkpoint: _BestCheckpoint) -> None:
        super().__init__()
        self.epochs = epochs
        self.steps = steps
        self.report = report
        self.step_bar = step_bar
        self.checkpoint = checkpoint
        self.times: list[float] = []
        self._start = 0.0
        self._lr = 0.0
        self._bar: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._start = time.perf_counter()
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        if self.step_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                             file=sys.stderr, unit="step")

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if logs is None:
            logs = {}
        seconds = time.perf_counter() - self._start
        self.times.append(seconds)
        val_accuracy = float(logs.get("val_accuracy", float("nan")))
        lr = self._lr
        logs.setdefault("learning_rate", lr)  # for the CSV log when ReduceLROnPlateau is off
        self.report(EpochProgress(
            epoch=epoch + 1, epochs=self.epochs, loss=float(logs.get("loss", float("nan"))),
            accuracy=float(logs.get("accuracy", float("nan"))), val_loss=float(logs.get("val_loss", float("nan"))),
            val_accuracy=val_accuracy, learning_rate=lr, seconds=seconds, best=self.checkpoint.improved,
        ))


#: Files of the per-epoch checkpoint that ``train(resume=True)`` continues from.
LAST_MODEL = "last.keras"
STATE_FILE = "state.json"


class _EpochCheckpoint(keras.callbacks.Callback):
    """After every epoch: the whole model (optimizer included) and the callbacks' state.

    Both files are written under a temporary name and renamed together
    (:class:`stream.render.outputs.OutputGroup`), so a run killed at any moment
    leaves the previous epoch's checkpoint intact.
    """

    def __init__(self, run_dir: Path, config: TrainingConfig, best: _BestCheckpoint,
                 progress: _Progress, watchers: dict[str, keras.callbacks.Callback]) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.config = config
        self.best = best
        self.progress = progress
        self.watchers = watchers

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        state = {
            "epoch": epoch + 1,
            "best": list(self.best.best),
            "best_epoch": self.best.best_epoch,
            "seconds_per_epoch": self.progress.times,
            "watchers": {name: {"wait": int(cb.wait), "best": float(cb.best)}
                         for name, cb in self.watchers.items()},
            "config": dataclasses.asdict(self.config),
        }
        with OutputGroup() as out:  # renamed in this order: the model, then the state that names its epoch
            model = out.add(self.run_dir / LAST_MODEL, "checkpoint")
            out.add(self.run_dir / STATE_FILE, "checkpoint state")
            self.model.save(model.write_path, overwrite=True)
            out.write(self.run_dir / STATE_FILE, json.dumps(state, indent=1))
            out.commit()


def read_state(run_dir: Path) -> dict[str, Any]:
    """The checkpoint state of an interrupted run (see :class:`_EpochCheckpoint`).

    Raises:
        DataError: ``run_dir`` holds no resumable checkpoint.
    """
    path = Path(run_dir) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"'{run_dir}' has no {STATE_FILE}: nothing to resume (start the run without --resume)"
                        ) from None
    except (OSError, ValueError) as err:
        raise DataError(f"'{path}' is not a readable checkpoint state: {err}") from err
    if not (Path(run_dir) / LAST_MODEL).is_file() or not isinstance(state, dict) or "epoch" not in state:
        raise DataError(f"'{run_dir}' holds an incomplete checkpoint ({LAST_MODEL} or its epoch is missing)")
    return state


def _log_progress(progress: EpochProgress) -> None:
    log.info("%s", progress.line())


def _augmenter(config: TrainingConfig) -> keras.Sequential | None:
    """The ImageDataGenerator recipe as Keras preprocessing layers (edge pixels repeated).

    Geometric: it runs on normalised images (every step commutes with the
    per-pixel normalisation).
    """
    if not config.augment:
        return None
    steps: list[keras.layers.Layer] = []
    if config.rotation_deg > 0:
        steps.append(keras.layers.RandomRotation(config.rotation_deg / 360.0, fill_mode="nearest",
                                                 seed=config.seed + 1))
    if config.shift > 0:
        steps.append(keras.layers.RandomTranslation(config.shift, config.shift, fill_mode="nearest",
                                                    seed=config.seed + 2))
    if config.zoom > 0:
        steps.append(keras.layers.RandomZoom(config.zoom, fill_mode="nearest", seed=config.seed + 4))
    if config.horizontal_flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=config.seed + 3))
    return keras.Sequential(steps, name="augment") if steps else None


class _Photometric:
    """Light, contrast and resolution changes a camera makes, on 0-255 pixels before normalisation.

    ``low_res``: that share of each batch is shrunk to 35-100 % of its side
    (one size per batch) and scaled back, as a small or blurred face would
    reach the classifier.
    """

    def __init__(self, config: TrainingConfig) -> None:
        steps: list[keras.layers.Layer] = []
        if config.brightness > 0:
            steps.append(keras.layers.RandomBrightness(config.brightness, value_range=(0, 255),
                                                       seed=config.seed + 5))
        if config.contrast > 0:
            steps.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=config.seed + 6))
        self._layers = keras.Sequential(steps, name="photometric") if steps else None
        self._low_res = config.low_res
        self._rng = tf.random.Generator.from_seed(config.seed + 7)

    @classmethod
    def of(cls, config: TrainingConfig) -> _Photometric | None:
        wanted = config.augment and (config.brightness > 0 or config.contrast > 0 or config.low_res > 0)
        return cls(config) if wanted else None

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        if self._layers is not None:
            x = self._layers(x, training=True)
        if self._low_res > 0:
            size = tf.shape(x)[1:3]
            scale = self._rng.uniform([], 0.35, 1.0)
            small = tf.maximum(tf.cast(tf.cast(size, tf.float32) * scale, tf.int32), 4)
            degraded = tf.image.resize(tf.image.resize(x, small, antialias=True), size)
            chosen = self._rng.uniform(tf.shape(x)[:1]) < self._low_res
            x = tf.where(chosen[:, None, None, None], degraded, x)
        return x


def _pipeline(
    split: Split, contract: ModelContract, batch_size: int, *, seed: int, training: bool,
    augmenter: keras.Sequential | None = None, photometric: _Photometric | None = None,
    weights: np.ndarray | None = None,
) -> tf.data.Dataset:
    tensors: tuple[np.ndarray, ...] = (split.images, split.targets)
    if weights is not None:
        tensors = (*tensors, weights[split.label_index].astype(np.float32))
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if training:
        ds = ds.shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)

    def prepare(x: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
        x = tf.cast(x, tf.float32)
        if photometric is not None:
            x = photometric(x)
        x = contract.normalize(x)
        if augmenter is not None:
            x = augmenter(x, training=True)
        return (x, *rest)

    # One map call at a time: the augmentation layers draw from stateful seed
    # generators, and parallel calls would race for them, so the same seed
    # would not give the same run. Prefetching still overlaps it with training.
    serial = augmenter is not None or photometric is not None
    return ds.map(prepare, num_parallel_calls=None if serial else tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _check_dataset(dataset: Dataset) -> None:
    train_split = dataset.splits.get("train")
    if train_split is None or len(train_split) == 0:
        raise DataError(f"{dataset.source}: the train split has no images")
    for name in ("val", "test"):
        if name not in dataset.splits or len(dataset.splits[name]) == 0:
            raise DataError(f"{dataset.source}: the {name} split has no images (add images, or "
                            "give train/ val/ test/ folders)")
    empty = [label for label, n in zip(dataset.labels, train_split.class_counts(len(dataset.labels)),
                                       strict=True) if n == 0]
    if empty:
        raise DataError(f"{dataset.source}: classes {empty} have no training images")


def train(
    dataset: Dataset,
    run_dir: Path,
    config: TrainingConfig | None = None,
    *,
    progress: Callable[[EpochProgress], None] | None = None,
    step_bar: bool = False,
    opset: int = 17,
    resume: bool = False,
    init: Path | None = None,
) -> TrainResult:
    """Train ``config.arch`` on ``dataset`` and write the run folder (see the module docstring).

    Args:
        dataset: Train, val and test splits (any size and colour: they are
            converted to ``config.input_size`` and ``config.color``).
        run_dir: Output folder; created, existing files of the same names replaced.
        config: Training settings; defaults to :class:`~stream.config.TrainingConfig`.
        progress: Called after every epoch; default logs one INFO line.
        step_bar: Show a per-step progress bar on stderr.
        opset: ONNX opset of ``model.onnx``.
        resume: Continue an interrupted run in ``run_dir`` from its last
            finished epoch (``last.keras`` + ``state.json``, written after
            every epoch): weights, optimizer state, learning rate, best
            checkpoint and the early-stopping / learning-rate counters. The
            shuffling order after a resume differs from an uninterrupted run.
        init: Start a new run from this trained ``.keras`` model's weights (fine-tuning) instead of
            random ones; its input shape and number of outputs must be this run's. The optimizer
            starts afresh at ``config.learning_rate``.

    Returns:
        A :class:`TrainResult`.

    Raises:
        DataError: A split or a class has no images.
        ConfigError: Unknown architecture, impossible input shape, or an ``init`` model that does not fit.
        ModelError: Training diverged or the export failed its parity check.
        OutputError: The run folder cannot be written.
    """
    config = config or TrainingConfig()
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"run folder '{run_dir}' could not be created: {err.strerror or err}") from err
    _check_dataset(dataset)
    keras.utils.set_random_seed(config.seed)

    contract = ModelContract(
        labels=dataset.labels,
        input_size_wh=(config.input_size, config.input_size),
        color=config.color,
        layout="NHWC",
        normalize_scale=1.0 / 255.0,
        normalize_offset=0.0,
        crop_margin=config.crop_margin,
        output="probabilities",
    )
    data = dataset.converted(contract.input_size_wh, contract.color)
    train_split, val_split, test_split = data.splits["train"], data.splits["val"], data.splits["test"]
    # Training targets only: validation and test are scored as labelled.
    train_split = dataclasses.replace(train_split, targets=neutral_weighted(train_split.targets, data.labels,
                                                                            config.neutral_weight))
    n_labels = len(data.labels)
    steps = math.ceil(len(train_split) / config.batch_size)
    momentum = auto_bn_momentum(steps) if config.bn_momentum == "auto" else float(config.bn_momentum)
    state = read_state(run_dir) if resume else None
    if state is not None:
        model = keras.models.load_model(run_dir / LAST_MODEL)
        log.info("resuming %s after epoch %d", run_dir, state["epoch"])
    else:
        model = build_model(config.arch, contract.input_shape(), n_labels, bn_momentum=momentum)
        if init is not None:
            _load_init(model, Path(init))
        model.compile(
            optimizer=keras.optimizers.Adam(config.learning_rate),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    log.info("%s", data.summary())
    log.info("model %s: %s parameters, input %s, batch-norm momentum %.3f", config.arch,
             f"{count_params(model):,}", contract.input_shape(), momentum)

    weights = class_weights(train_split, n_labels) if config.class_weights else None
    if weights is not None:
        log.info("class weights: %s", ", ".join(f"{lab} {w:.2f}" for lab, w in zip(data.labels, weights,
                                                                                   strict=True)))
    train_ds = _pipeline(train_split, contract, config.batch_size, seed=config.seed, training=True,
                         augmenter=_augmenter(config), photometric=_Photometric.of(config),
                         weights=weights)
    val_ds = _pipeline(val_split, contract, config.batch_size, seed=config.seed, training=False)

    model_path = run_dir / "model.keras"
    history_csv = run_dir / "history.csv"
    if state is None:
        for stale in (model_path, history_csv, run_dir / LAST_MODEL, run_dir / STATE_FILE):
            stale.unlink(missing_ok=True)
    checkpoint = _BestCheckpoint(model_path)
    reporter = _Progress(config.epochs, steps, progress or _log_progress, step_bar, checkpoint)
    watchers: dict[str, keras.callbacks.Callback] = {}
    callbacks: list[keras.callbacks.Callback] = []
    recal = _recalibration(model, train_split, contract, config)
    if recal is not None:
        callbacks.append(recal)
    callbacks += [checkpoint, keras.callbacks.TerminateOnNaN()]
    if config.early_stopping_patience > 0:
        watchers["early_stopping"] = keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=config.early_stopping_patience)
    if config.reduce_lr_patience > 0:
        watchers["reduce_lr"] = keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=_REDUCE_LR_FACTOR, patience=config.reduce_lr_patience,
            min_lr=_MIN_LEARNING_RATE)
    callbacks += watchers.values()
    initial_epoch = 0
    if state is not None:
        initial_epoch = _restore(state, checkpoint, reporter)
        callbacks.append(_RestoreWatchers(watchers, state.get("watchers", {})))
    # The reporter runs before the CSV logger: it adds the learning rate to the epoch's logs.
    callbacks += [reporter, keras.callbacks.CSVLogger(str(history_csv), append=state is not None),
                  _EpochCheckpoint(run_dir, config, checkpoint, reporter, watchers)]

    started = time.perf_counter()
    history = model.fit(train_ds, validation_data=val_ds, epochs=config.epochs, callbacks=callbacks,
                        shuffle=False, verbose=0, initial_epoch=initial_epoch)
    train_seconds = time.perf_counter() - started + sum(reporter.times[:initial_epoch])
    epochs_run = initial_epoch + len(history.history.get("loss", []))
    if not model_path.is_file():
        raise ModelError(f"training produced no checkpoint in {epochs_run} epochs (loss "
                         f"{history.history.get('loss', ['?'])[-1]}); try a lower learning rate")

    best = keras.models.load_model(model_path, compile=False)
    write_sidecar_contract(model_path, contract)
    predictor = KerasPredictor(best, contract, name=str(model_path))
    validation = evaluate_model(predictor, data, "val")
    test = evaluate_model(predictor, data, "test")

    parity = test_split.images[:PARITY_IMAGES]
    parity_bgr = convert_images(parity, data.color, contract.input_size_wh,
                                "gray" if contract.color == "gray" else "bgr")
    np.save(run_dir / "parity_images.npy", parity_bgr)
    export = export_keras(best, run_dir / "model.onnx", contract, parity_inputs=parity_bgr,
                          parity_color="bgr", opset=opset)

    plot_history(history_csv, run_dir / "history.png")
    seconds_per_epoch = float(np.mean(reporter.times)) if reporter.times else 0.0
    settings = dataclasses.asdict(config)
    settings["bn_momentum_used"] = momentum
    extra = {
        "validation": {"accuracy": validation.accuracy, "macro_f1": validation.macro_f1,
                       "n_samples": validation.n_samples},
        "training": {
            "settings": settings,
            "dataset": {"source": dataset.source, "notes": list(dataset.notes),
                        "sizes": {name: len(data.splits[name]) for name in data.splits},
                        "train_class_counts": dict(zip(data.labels,
                                                       map(int, train_split.class_counts(n_labels)),
                                                       strict=True))},
            "parameters": count_params(model),
            "epochs_run": epochs_run,
            "best_epoch": checkpoint.best_epoch,
            "seconds_total": train_seconds,
            "seconds_per_epoch": seconds_per_epoch,
            "bn_recalibration": {"layers": len(recal.recal.layers) if recal else 0,
                                 "images": len(recal.images) if recal else 0,
                                 "seconds_total": recal.seconds if recal else 0.0},
        },
        "export": export.to_dict(),
    }
    test = dataclasses.replace(test, extra=extra)
    write_report(test, run_dir)
    log.info("run folder %s: %s; ONNX parity max |diff| %.1e", run_dir, test.summary(), export.max_abs_diff)
    return TrainResult(run_dir, model_path, export.path, test, validation, export, epochs_run,
                       checkpoint.best_epoch, seconds_per_epoch)


def _load_init(model: keras.Model, path: Path) -> None:
    """Give ``model`` the weights of the trained model at ``path`` (same architecture, input and outputs).

    Raises:
        ConfigError: It cannot be read or does not fit.
    """
    try:
        trained = keras.models.load_model(path, compile=False)
    except Exception as err:  # Keras raises its own types (and ValueError, OSError) for a bad file
        raise ConfigError(f"--init model '{path}' could not be loaded: {str(err).splitlines()[0][:200]}") from None
    mine = [tuple(w.shape) for w in model.weights]
    theirs = [tuple(w.shape) for w in trained.weights]
    if mine != theirs:
        raise ConfigError(f"--init model '{path}' does not fit this run: input {tuple(trained.input_shape)} and "
                          f"{len(theirs)} weight arrays against {tuple(model.input_shape)} and {len(mine)}; "
                          "use the architecture, input size, colour and labels it was trained with")
    model.set_weights(trained.get_weights())
    log.info("starting from the weights of %s", path)


def _restore(state: dict[str, Any], checkpoint: _BestCheckpoint, reporter: _Progress) -> int:
    """Put the best checkpoint and the epoch times back where the interrupted run left them."""
    checkpoint.best = (float(state["best"][0]), float(state["best"][1]))
    checkpoint.best_epoch = int(state["best_epoch"])
    reporter.times = [float(t) for t in state.get("seconds_per_epoch", [])]
    return int(state["epoch"])


class _RestoreWatchers(keras.callbacks.Callback):
    """Early stopping and the learning-rate cut reset their counters in ``on_train_begin``;
    this runs after them and puts the interrupted run's counters back."""

    def __init__(self, watchers: dict[str, keras.callbacks.Callback], saved: dict[str, dict[str, float]]) -> None:
        super().__init__()
        self.watchers = watchers
        self.saved = saved

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        for name, cb in self.watchers.items():
            if name in self.saved:
                cb.wait, cb.best = int(self.saved[name]["wait"]), float(self.saved[name]["best"])


def _recalibration(
    model: keras.Model, train_split: Split, contract: ModelContract, config: TrainingConfig
) -> _Recalibrate | None:
    if config.bn_recalibration_samples == 0 or not batch_norm_layers(model):
        return None
    try:
        recal = BatchNormRecalibration(model)
    except ModelError as err:
        log.warning("batch-norm statistics will not be re-estimated: %s", err)
        return None
    n = min(len(train_split), config.bn_recalibration_samples)
    pick = np.random.default_rng(config.seed).choice(len(train_split), size=n, replace=False)
    images = contract.normalize(train_split.images[np.sort(pick)].astype(np.float32)).astype(np.float32)
    return _Recalibrate(recal, images)
