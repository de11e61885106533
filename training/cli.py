"""The ``train``, ``evaluate`` and ``export`` subcommands of ``emostream``.

:func:`register` adds them to the main parser without importing TensorFlow;
each handler imports what it needs when it runs. Handlers return an exit code
and raise :class:`~stream.errors.StreamError` subclasses for bad input. The
settings come from the ``training:`` section of ``--config`` (or the
defaults), overridden by the flags given.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from stream.config import Config, TrainingConfig, load_config
from stream.contract import Color, ModelContract
from stream.errors import ConfigError, DataError, ModelError, OutputError

__all__ = ["parse_normalize", "register"]

log = logging.getLogger(__name__)

_NORMALIZE_PRESETS = {
    "unit": (1.0 / 255.0, 0.0),        # [0, 1]
    "symmetric": (2.0 / 255.0, -1.0),  # [-1, 1]
    "raw": (1.0, 0.0),                 # [0, 255]
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate`` and ``export`` to ``emostream``'s subcommands.

    Args:
        subparsers: The main parser's ``add_subparsers()`` result.
    """
    _register_train(subparsers)
    _register_evaluate(subparsers)
    _register_export(subparsers)
    _register_calibrate(subparsers)


def _config_flag(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a --config given to the main parser is not overwritten by this default.
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="PATH",
                        help="config.yaml whose 'training:' section gives the defaults")


def _data_flags(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--fer2013", type=Path, metavar="CSV", help="fer2013.csv (emotion, pixels, Usage)")
    source.add_argument("--images", type=Path, metavar="DIR",
                        help="folder with one subfolder of images per class (or train/ val/ test/ of those)")
    source.add_argument("--ferplus-dir", type=Path, metavar="DIR",
                        help="FERPlus as its scripts write it: FER2013Train/ FER2013Valid/ FER2013Test/, "
                             "each with PNGs and label.csv")
    source.add_argument("--dataset", action="append", metavar="PATH[,weight=W][,faces=MODE][,name=N]",
                        help="a FERPlus folder or an images/ + labels.csv folder; repeat for several "
                             "(mixed by weight; faces: detect, whole or auto; training/datasets.py)")
    source.add_argument("--data", type=Path, metavar="FILE.yaml",
                        help="data file: a 'datasets:' list (path, weight, faces, name) and an optional "
                             "'crop:' (margin, offset_y, align) for detected faces")
    parser.add_argument("--ferplus", type=Path, metavar="CSV",
                        help="fer2013new.csv: FERPlus votes replacing the FER2013 labels (needs --fer2013)")
    parser.add_argument("--label-mode", choices=("majority", "soft"), default=None,
                        help="FERPlus targets: most-voted emotion or the vote distribution (default: config)")
    parser.add_argument("--no-merge-contempt", dest="merge_contempt", action="store_const", const=False,
                        default=None, help="FERPlus: keep 'contempt' as an eighth class instead of 'neutral'")


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train an emotion classifier and export it for the stream",
        description="Train on FER2013 (+ FERPlus) or a folder of images; RUN_DIR gets model.keras, "
                    "model.onnx, report.json (test split), confusion_matrix.png, history.csv/png.",
    )
    _data_flags(p, required=False)
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="run folder to write")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run from its last finished epoch, with its own data and settings")
    p.add_argument("--init", type=Path, metavar="MODEL.keras",
                   help="start from this trained model's weights (fine-tuning: same architecture, input and "
                        "labels; e.g. models/mix_resnet/model.keras) instead of random ones")
    p.add_argument("--label-smoothing", type=float, metavar="E", help="label smoothing of the loss (default 0)")
    _config_flag(p)
    p.add_argument("--epochs", type=int, help="maximum epochs (early stopping may end sooner)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--input-size", type=int, metavar="PX", help="square model input side (default 48)")
    p.add_argument("--arch", help="recipe (default), recipe-small or mini-xception")
    p.add_argument("--learning-rate", type=float, metavar="LR")
    p.add_argument("--seed", type=int)
    p.add_argument("--color", choices=("gray", "rgb", "bgr"), help="model input colour (default gray)")
    p.add_argument("--crop-margin", type=float, metavar="SHARE",
                   help="face crop margin the stream applies for this model (default 0.15)")
    p.add_argument("--class-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="weight classes by inverse frequency")
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False, default=None,
                   help="train without rotation / shift / flip augmentation")
    p.add_argument("--bn-momentum", metavar="auto|M", help="batch-norm momentum (default auto)")
    p.add_argument("--bn-recalibration-samples", type=int, metavar="N",
                   help="training images the batch-norm statistics are re-estimated on before each "
                        "validation; 0 turns it off (default 512)")
    p.add_argument("--patience", type=int, dest="early_stopping_patience", metavar="EPOCHS",
                   help="early-stopping patience on validation accuracy; 0 turns it off")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset of model.onnx (default 17)")
    p.set_defaults(func=_train)


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="score a .keras or .onnx classifier on a dataset split",
        description="Accuracy, macro F1, per-class scores and the confusion matrix, in inference mode.",
    )
    p.add_argument("model", type=Path, metavar="MODEL", help=".onnx, .keras or .h5 classifier")
    _data_flags(p)
    p.add_argument("--split", default="test", help="train, val or test (default test: FER2013 PrivateTest)")
    p.add_argument("--out", type=Path, metavar="DIR", help="write report.json and confusion_matrix.png here")
    p.add_argument("--tta-flip", action="store_true",
                   help="also score test-time flip averaging (each face and its mirror image), reported apart")
    _config_flag(p)
    _contract_flags(p, for_export=False)
    p.set_defaults(func=_evaluate)


def _register_calibrate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "calibrate", help="fit a probability temperature on the validation split, store it in the model",
        description="Temperature scaling: fit T on the validation split (NLL), report the expected "
                    "calibration error (15 bins) before and after on the test split, and write a copy "
                    "of the ONNX model with T in its contract. Top-1 predictions do not change.",
    )
    p.add_argument("model", type=Path, metavar="MODEL.onnx", help="ONNX classifier carrying an emostream contract")
    _data_flags(p)
    p.add_argument("--out", type=Path, metavar="CALIBRATED.onnx",
                   help="write the calibrated model here (may be MODEL.onnx itself); without it, only report")
    p.add_argument("--report", type=Path, metavar="REPORT.json", help="write the numbers as JSON here")
    _config_flag(p)
    p.set_defaults(func=_calibrate)


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="convert a Keras classifier to ONNX for the stream",
        description="Keras (.keras/.h5) -> ONNX with a dynamic batch axis and the emostream contract "
                    "in its metadata; fails unless ONNX matches Keras on real face crops.",
    )
    p.add_argument("model", type=Path, metavar="MODEL", help=".keras or .h5 classifier")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL.onnx", help="ONNX file to write")
    _config_flag(p)
    _contract_flags(p, for_export=True)
    p.add_argument("--parity-images", type=Path, metavar="PATH",
                   help="real face crops for the parity check: a folder of images or a .npy uint8 array "
                        "(default: parity_images.npy beside the model, as left by 'train')")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted |keras - onnx| (default 1e-4)")
    p.set_defaults(func=_export)


def _contract_flags(p: argparse.ArgumentParser, *, for_export: bool) -> None:
    what = "" if for_export else " (Keras models without a .contract.json)"
    p.add_argument("--labels", metavar="A,B,...", help=f"output labels in order{what}")
    p.add_argument("--normalize", metavar="unit|symmetric|raw|SCALE,OFFSET",
                   help=f"input = uint8 * SCALE + OFFSET; unit = x/255, symmetric = x/127.5-1{what}")
    p.add_argument("--color", choices=("gray", "rgb", "bgr"), help=f"input colour{what}")
    if for_export:
        p.add_argument("--crop-margin", type=float, metavar="SHARE", help="face crop margin for the stream")
        p.add_argument("--crop-offset-y", type=float, metavar="SIDES",
                       help="move the stream's face crop down by this many box sides (negative: up); "
                            "benchmarks/crop_framing.py measures it")
        p.add_argument("--flip-average", action="store_true", default=None,
                       help="the stream runs each face and its mirror image and averages them "
                            "(more accurate, twice the classifier's cost)")
        p.add_argument("--output-kind", choices=("probabilities", "logits"),
                       help="what the model outputs (default: from its last activation)")


# --------------------------------------------------------------------------- helpers


def parse_normalize(text: str) -> tuple[float, float]:
    """``unit``, ``symmetric``, ``raw`` or ``SCALE,OFFSET`` -> ``(scale, offset)``.

    Raises:
        ConfigError: Anything else.
    """
    preset = _NORMALIZE_PRESETS.get(text.strip().lower())
    if preset is not None:
        return preset
    parts = text.split(",")
    try:
        if len(parts) != 2:
            raise ValueError(text)
        scale, offset = float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"--normalize: expected unit, symmetric, raw or SCALE,OFFSET, got {text!r}") from None
    if scale == 0:
        raise ConfigError("--normalize: scale must not be 0")
    return scale, offset


def _parse_labels(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    labels = tuple(s.strip() for s in text.split(",") if s.strip())
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ConfigError(f"--labels: expected 2 or more distinct comma-separated names, got {text!r}")
    return labels


def _load(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


_TRAIN_FLAGS = ("epochs", "batch_size", "input_size", "arch", "learning_rate", "seed", "color", "crop_margin",
                "class_weights", "augment", "bn_recalibration_samples", "early_stopping_patience",
                "label_smoothing")
_DATA_FLAGS = ("label_mode", "merge_contempt")


def _training_config(args: argparse.Namespace, names: tuple[str, ...]) -> TrainingConfig:
    """The config file's ``training:`` section with the flags in ``names`` applied (and validated)."""
    bn_momentum: Any = getattr(args, "bn_momentum", None)
    if bn_momentum is not None and bn_momentum != "auto":
        try:
            bn_momentum = float(bn_momentum)
        except ValueError:
            raise ConfigError(f"--bn-momentum: expected 'auto' or a number, got {bn_momentum!r}") from None
    overrides = {f"training.{name}": getattr(args, name, None) for name in names}
    overrides["training.bn_momentum"] = bn_momentum
    return _load(args).with_overrides(overrides).training


def _import_tensorflow() -> str:
    """Import TensorFlow with its C++ start-up chatter hidden; hint at the extra when it is missing.

    TensorFlow writes to file descriptor 2 before its log level applies
    ("All log messages before absl::InitializeLog() ..."), and on a machine
    without CUDA an error line on first device use. Neither says anything
    the user can act on, so both go to /dev/null.

    Returns:
        One line naming the TensorFlow version and the device it will use.

    Raises:
        ConfigError: TensorFlow (the ``train`` extra) is not installed.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            sys.stderr.flush()
            os.dup2(null.fileno(), 2)
            try:
                import keras  # noqa: F401
                import tensorflow as tf

                gpus = tf.config.list_physical_devices("GPU")
            finally:
                os.dup2(saved, 2)
    except ImportError as err:
        raise ConfigError(f"training needs TensorFlow and tf2onnx: pip install 'emostream[train]' ({err})") from err
    finally:
        os.close(saved)
    # tf2onnx logs every optimisation pass at INFO.
    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    device = ", ".join(g.name for g in gpus) if gpus else "CPU (no GPU visible to TensorFlow)"
    return f"TensorFlow {tf.__version__} on {device}"


def _absolute_dataset_arg(text: str) -> str:
    """A ``--dataset`` value with its path made absolute (for ``--resume`` from another folder)."""
    path, sep, rest = text.partition(",")
    return str(Path(path).resolve()) + sep + rest


def _mixture(args: argparse.Namespace, cfg: TrainingConfig, *, size_wh: tuple[int, int], color: Color,
             splits: tuple[str, ...], crop_margin: float | None = None, crop_offset_y: float | None = None) -> Any:
    """``--dataset`` / ``--data``: every set read and mixed (:func:`training.datasets.load_datasets`).

    Detected faces are cut with the data file's ``crop:``, else with ``crop_margin`` /
    ``crop_offset_y`` (a model's contract when evaluating) or the training config's margin
    and no offset, eyes aligned as the stream does by default.
    """
    from training.datasets import CropSettings, load_data_file, load_datasets, parse_dataset_arg

    crop = None
    if getattr(args, "data", None) is not None:
        specs, crop = load_data_file(args.data)
    else:
        specs = [parse_dataset_arg(text) for text in args.dataset]
    if crop is None:
        crop = CropSettings(cfg.crop_margin if crop_margin is None else crop_margin,
                            0.0 if crop_offset_y is None else crop_offset_y, "eyes")
    return load_datasets(specs, size_wh=size_wh, color=color, label_mode=cfg.label_mode,
                         merge_contempt=cfg.merge_contempt, splits=splits, crop=crop, seed=cfg.seed)


def _dataset(args: argparse.Namespace, cfg: TrainingConfig, *, size_wh: tuple[int, int], color: Color,
             splits: tuple[str, ...]) -> Any:
    from training.data import load_dataset

    if getattr(args, "dataset", None) or getattr(args, "data", None) is not None:
        mixture = _mixture(args, cfg, size_wh=size_wh, color=color, splits=splits)
        for name, part in mixture.parts.items():
            print(f"  {name} (weight {part.spec.weight:g}): {part.dataset.summary()}; {'; '.join(part.dataset.notes)}",
                  file=sys.stderr)
        return mixture.dataset

    if args.ferplus is not None and args.fer2013 is None:
        raise DataError("--ferplus needs --fer2013 (the FERPlus file holds votes, not pixels)")
    return load_dataset(fer2013=args.fer2013, ferplus=args.ferplus, images=args.images,
                        ferplus_dir=getattr(args, "ferplus_dir", None), size_wh=size_wh,
                        color=color, label_mode=cfg.label_mode, merge_contempt=cfg.merge_contempt,
                        validation_split=cfg.validation_split, test_split=cfg.test_split, splits=splits)


def _print_report(report: Any) -> None:
    print(f"{report.split} split, {report.n_samples} images: accuracy {100 * report.accuracy:.2f}%, "
          f"macro F1 {report.macro_f1:.3f}")
    extra = report.extra
    majority = extra.get("majority_rule")
    if majority is not None:
        print(f"  plurality label: accuracy {100 * report.accuracy:.2f}% (n = {report.n_samples}); FERPlus "
              f"majority rule: accuracy {100 * majority['accuracy']:.2f}% (n = {majority['n_samples']}), "
              f"macro F1 {majority['macro_f1']:.3f}")
    calibration = extra.get("calibration")
    if calibration is not None:
        raw = calibration.get("ece_at_temperature_1")
        print(f"  calibration: temperature {calibration['temperature']:g}, ECE ({calibration['ece_bins']} bins) "
              f"{100 * calibration['ece']:.2f}%" + (f" (at T = 1: {100 * raw:.2f}%)" if raw is not None else ""))
    tta = extra.get("tta_flip")
    if tta is not None:
        line = f"  flip averaging: accuracy {100 * tta['accuracy']:.2f}% (n = {tta['n_samples']}), " \
               f"macro F1 {tta['macro_f1']:.3f}"
        if "majority_rule" in tta:
            line += (f"; majority rule {100 * tta['majority_rule']['accuracy']:.2f}% "
                     f"(n = {tta['majority_rule']['n_samples']})")
        print(line + f"; ECE {100 * tta['ece']:.2f}%")
    width = max(len(label) for label in report.labels)
    print(f"  {'label':<{width}}  precision  recall     f1  support")
    for label, m in report.per_class.items():
        print(f"  {label:<{width}}  {m.precision:9.3f}  {m.recall:6.3f}  {m.f1:5.3f}  {m.support:7d}")


# --------------------------------------------------------------------------- handlers


#: What ``train`` records in the run folder so that ``--resume RUN_DIR`` reloads the same data.
_RUN_ARGS = "train_args.json"
_SOURCE_FLAGS = ("fer2013", "ferplus", "images", "ferplus_dir", "data")
_MULTI_FLAGS = ("dataset",)


def _resume_args(args: argparse.Namespace) -> TrainingConfig:
    """For ``--resume``: the interrupted run's data flags and settings (flags given now are refused)."""
    import json

    from training.trainer import read_state

    given = [f"--{name.replace('_', '-')}" for name in (*_SOURCE_FLAGS, *_MULTI_FLAGS, *_TRAIN_FLAGS, *_DATA_FLAGS)
             if getattr(args, name, None) is not None]
    if args.out is not None:
        given.append("--out")
    if given:
        raise ConfigError(f"--resume continues a run with its own data and settings; drop {', '.join(given)}")
    state = read_state(args.resume)
    try:
        saved = json.loads((args.resume / _RUN_ARGS).read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"'{args.resume / _RUN_ARGS}' could not be read: {err}") from err
    for name in _SOURCE_FLAGS:
        setattr(args, name, Path(saved[name]) if saved.get(name) else None)
    for name in _MULTI_FLAGS:
        setattr(args, name, list(saved[name]) if saved.get(name) else None)
    args.out = args.resume
    return TrainingConfig(**state["config"])


def _train(args: argparse.Namespace) -> int:
    import json

    if args.init is not None and not args.init.is_file():
        raise ConfigError(f"--init model '{args.init}' does not exist (a trained .keras file, e.g. "
                          "models/mix_resnet/model.keras)")
    if args.resume is not None:
        if args.init is not None:
            raise ConfigError("--init starts a new run; --resume continues one from its own last epoch: drop one")
        cfg = _resume_args(args)
    else:
        if args.out is None or not any(getattr(args, n, None)
                                       for n in ("fer2013", "images", "ferplus_dir", "dataset", "data")):
            raise ConfigError("train needs --out RUN_DIR and one of --fer2013, --ferplus-dir, --images, "
                              "--dataset, --data (or --resume RUN_DIR)")
        cfg = _training_config(args, _TRAIN_FLAGS + _DATA_FLAGS)
    size = (cfg.input_size, cfg.input_size)
    dataset = _dataset(args, cfg, size_wh=size, color=cfg.color, splits=("train", "val", "test"))
    print(dataset.summary(), file=sys.stderr)
    print(_import_tensorflow(), file=sys.stderr)
    from training.trainer import train

    def show(progress: Any) -> None:
        print(progress.line(), file=sys.stderr, flush=True)

    if args.resume is None:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
            saved: dict[str, Any] = {name: str(Path(v).resolve()) if (v := getattr(args, name, None)) else None
                                     for name in _SOURCE_FLAGS}
            saved["dataset"] = [_absolute_dataset_arg(v) for v in args.dataset] if args.dataset else None
            (args.out / _RUN_ARGS).write_text(json.dumps(saved, indent=1))
        except OSError as err:
            raise OutputError(f"run folder '{args.out}' could not be written: {err.strerror or err}") from err
    result = train(dataset, args.out, cfg, progress=show, step_bar=sys.stderr.isatty(), opset=args.opset,
                   resume=args.resume is not None, init=args.init)
    print(f"best epoch {result.best_epoch} of {result.epochs_run} ({result.seconds_per_epoch:.0f} s/epoch); "
          f"validation accuracy {100 * result.validation.accuracy:.2f}%")
    _print_report(result.test)
    print(f"ONNX parity on {result.export.n_samples} test images: max |keras - onnx| "
          f"{result.export.max_abs_diff:.1e}, argmax agreement {100 * result.export.argmax_agreement:.1f}%")
    print(f"wrote {result.run_dir}/: model.keras, model.onnx, report.json, confusion_matrix.png, "
          "history.csv, history.png")
    print(f"run it: emostream run SOURCE --model {result.onnx_path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    cfg = _training_config(args, _DATA_FLAGS)
    from training.data import normalize_split_name
    from training.evaluate import KerasPredictor, evaluate_model, load_predictor, write_report

    predictor: Any
    if args.model.suffix.lower() != ".onnx":
        _import_tensorflow()
    if args.model.suffix.lower() == ".onnx":
        if args.labels or args.normalize or args.color:
            raise ConfigError(f"--labels / --normalize / --color apply to Keras models only; '{args.model}' "
                              "carries its contract in its metadata")
        predictor = load_predictor(args.model)
    else:
        model, contract = _keras_with_contract(args, cfg)
        predictor = KerasPredictor(model, contract, name=str(args.model))
    split = normalize_split_name(args.split)
    contract = predictor.contract
    if getattr(args, "dataset", None) or getattr(args, "data", None) is not None:
        return _evaluate_many(args, cfg, predictor, split)
    dataset = _dataset(args, cfg, size_wh=contract.input_size_wh, color=contract.color, splits=(split,))
    report = evaluate_model(predictor, dataset, split, tta_flip=args.tta_flip)
    _print_report(report)
    if args.out is not None:
        path = write_report(report, args.out)
        print(f"wrote {path} and {path.parent / 'confusion_matrix.png'}")
    return 0


def _evaluate_many(args: argparse.Namespace, cfg: TrainingConfig, predictor: Any, split: str) -> int:
    """``evaluate --dataset ... --dataset ...``: one report per set that has ``split``."""
    from training.evaluate import evaluate_model, write_report

    contract = predictor.contract
    mixture = _mixture(args, cfg, size_wh=contract.input_size_wh, color=contract.color, splits=(split,),
                       crop_margin=contract.crop_margin, crop_offset_y=contract.crop_offset_y)
    scored = 0
    for name, part in mixture.parts.items():
        data = part.dataset.splits.get(split)
        if data is None or len(data) == 0:
            print(f"{name}: no '{split}' split, skipped")
            continue
        missed = len(part.not_found.get(split, []))
        print(f"== {name} ({part.faces_mode}" + (f"; {missed} images without a face found, not scored"
                                                 if missed else "") + ")")
        report = evaluate_model(predictor, part.dataset, split, tta_flip=args.tta_flip)
        _print_report(report)
        scored += 1
        if args.out is not None:
            path = write_report(report, args.out / name)
            print(f"wrote {path} and {path.parent / 'confusion_matrix.png'}")
    if not scored:
        raise DataError(f"no dataset has a '{split}' split")
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    import json

    cfg = _training_config(args, _DATA_FLAGS)
    if args.model.suffix.lower() != ".onnx":
        raise ConfigError(f"calibrate: MODEL must be an .onnx classifier (the temperature goes into its "
                          f"contract metadata), got '{args.model}'")
    from training.calibrate import calibrate_predictor, write_temperature
    from training.evaluate import load_predictor

    predictor = load_predictor(args.model)
    contract = predictor.contract
    dataset = _dataset(args, cfg, size_wh=contract.input_size_wh, color=contract.color, splits=("val", "test"))
    report = calibrate_predictor(predictor, dataset)
    for line in report.lines():
        print(line)
    if args.report is not None:
        try:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise OutputError(f"report '{args.report}' could not be written: {err.strerror or err}") from err
        print(f"wrote {args.report}")
    if args.out is not None:
        write_temperature(args.model, args.out, report.temperature)
        print(f"wrote {args.out} (contract temperature {report.temperature:.4f})")
    return 0


def _keras_with_contract(args: argparse.Namespace, cfg: TrainingConfig) -> tuple[Any, ModelContract]:
    """Load a Keras model and its contract: the ``.contract.json`` beside it, else derived; flags win."""
    from training.export import contract_for_keras, load_keras_model, read_sidecar_contract, sidecar_path

    model = load_keras_model(args.model)
    base = read_sidecar_contract(args.model)
    if base is not None:
        return model, _override_contract(base, args)
    normalize = parse_normalize(args.normalize) if args.normalize else None
    if normalize is None:
        log.warning("no --normalize given and no %s: assuming input = uint8 / 255", sidecar_path(args.model).name)
    crop_margin = getattr(args, "crop_margin", None)
    contract = contract_for_keras(
        model, labels=_parse_labels(args.labels), color=args.color, normalize=normalize,
        crop_margin=cfg.crop_margin if crop_margin is None else crop_margin,
        output=getattr(args, "output_kind", None), origin=f"model '{args.model}'",
    )
    if getattr(args, "crop_offset_y", None) is not None or getattr(args, "flip_average", None):
        contract = _override_contract(contract, argparse.Namespace(
            labels=None, normalize=None, color=None, crop_offset_y=getattr(args, "crop_offset_y", None),
            flip_average=getattr(args, "flip_average", None)))
    return model, contract


def _override_contract(contract: ModelContract, args: argparse.Namespace) -> ModelContract:
    import dataclasses

    changes: dict[str, Any] = {}
    labels = _parse_labels(args.labels)
    if labels is not None:
        changes["labels"] = labels
    if args.normalize is not None:
        changes["normalize_scale"], changes["normalize_offset"] = parse_normalize(args.normalize)
    if args.color is not None:
        changes["color"] = args.color
    if getattr(args, "crop_margin", None) is not None:
        changes["crop_margin"] = args.crop_margin
    if getattr(args, "crop_offset_y", None) is not None:
        changes["crop_offset_y"] = args.crop_offset_y
    if getattr(args, "output_kind", None) is not None:
        changes["output"] = args.output_kind
    if getattr(args, "flip_average", None):
        changes["flip_average"] = True
    if not changes:
        return contract
    updated = dataclasses.replace(contract, **changes)
    try:
        updated.validate("command line")
    except ModelError as err:
        raise ConfigError(str(err)) from err
    return updated


def _export(args: argparse.Namespace) -> int:
    cfg = _load(args).training
    _import_tensorflow()
    from training.data import load_image_array
    from training.export import export_keras

    model, contract = _keras_with_contract(args, cfg)
    parity_path = args.parity_images or args.model.parent / "parity_images.npy"
    if args.parity_images is None and not parity_path.is_file():
        raise ConfigError("export: the parity check needs real face crops: pass --parity-images DIR "
                          "(a folder of face images) or a .npy uint8 array")
    images = load_image_array(parity_path)
    report = export_keras(model, args.out, contract, parity_inputs=images, parity_color="bgr",
                          opset=args.opset, atol=args.atol)
    print(f"wrote {report.path}: {len(contract.labels)} labels ({', '.join(contract.labels)}), input "
          f"{contract.input_size_wh[0]}x{contract.input_size_wh[1]} {contract.color}, opset {report.opset}")
    print(f"parity on {report.n_samples} images: max |keras - onnx| {report.max_abs_diff:.1e}, "
          f"argmax agreement {100 * report.argmax_agreement:.1f}%")
    return 0
