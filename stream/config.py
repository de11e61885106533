"""Every tunable of emostream, loaded once into frozen, validated dataclasses.

``config.yaml`` at the repository root documents each key. Loading rejects
unknown keys and values of the wrong type or range with a :class:`ConfigError`
naming the dotted key; command-line flags override the file through
:meth:`Config.with_overrides`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from stream.errors import ConfigError

__all__ = [
    "REPO_ROOT",
    "CaptureConfig",
    "ClassifierConfig",
    "Config",
    "DetectorConfig",
    "OutputConfig",
    "RuntimeConfig",
    "TrackingConfig",
    "TrainingConfig",
    "build_dataclass",
    "load_config",
]

#: The repository root: default model paths and the sample clip are relative to it.
REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO_ROOT / "models"


@dataclass(frozen=True)
class CaptureConfig:
    """How frames are read from the source."""

    queue_size: int = 64
    live_buffer: int = 2
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    reconnect_budget_s: float = 30.0
    reconnect_initial_backoff_s: float = 0.5
    reconnect_max_backoff_s: float = 5.0
    rtsp_transport: Literal["tcp", "udp"] = "tcp"

    def validate(self, key: str) -> None:
        _positive(self, key, "queue_size", "live_buffer", "open_timeout_s", "read_timeout_s",
                  "reconnect_initial_backoff_s", "reconnect_max_backoff_s")
        _non_negative(self, key, "reconnect_budget_s")


@dataclass(frozen=True)
class DetectorConfig:
    """The BlazeFace face detector."""

    model: Path = MODELS_DIR / "blazeface_short_range.onnx"
    score_threshold: float = 0.5
    nms_iou: float = 0.3
    min_face_px: int = 12

    def validate(self, key: str) -> None:
        _unit_interval(self, key, "score_threshold", "nms_iou")
        _non_negative(self, key, "min_face_px")


@dataclass(frozen=True)
class ClassifierConfig:
    """The emotion classifier (any ONNX model carrying an emostream contract)."""

    model: Path = MODELS_DIR / "emotion_minixception.onnx"


@dataclass(frozen=True)
class RuntimeConfig:
    """ONNX Runtime and batching."""

    providers: tuple[Literal["tensorrt", "cuda", "cpu"], ...] = ("cuda", "cpu")
    intra_op_threads: int = 0
    batch_size: int = 8
    result_queue_size: int = 16

    def validate(self, key: str) -> None:
        _positive(self, key, "batch_size", "result_queue_size")
        _non_negative(self, key, "intra_op_threads")
        if not self.providers:
            raise ConfigError(f"{key}.providers: must name at least one provider")


@dataclass(frozen=True)
class TrackingConfig:
    """Face ids across frames and smoothing of the probabilities."""

    iou_threshold: float = 0.3
    max_missed_frames: int = 10
    smoothing: Literal["auto", "on", "off"] = "auto"
    smoothing_alpha: float = 0.4

    def validate(self, key: str) -> None:
        _unit_interval(self, key, "iou_threshold")
        _non_negative(self, key, "max_missed_frames")
        if not 0.0 < self.smoothing_alpha <= 1.0:
            raise ConfigError(f"{key}.smoothing_alpha: must be in (0, 1], got {self.smoothing_alpha}")


@dataclass(frozen=True)
class OutputConfig:
    """What is written and drawn."""

    dir: Path = Path("out")
    video: bool = True
    events: bool = True
    codec: str = "mp4v"
    probability_bars: bool = True
    fps_overlay: bool = True
    progress: bool = True
    display: Literal["auto", "on", "off"] = "auto"

    def validate(self, key: str) -> None:
        if len(self.codec) != 4:
            raise ConfigError(f"{key}.codec: must be a four-character code, got {self.codec!r}")


@dataclass(frozen=True)
class TrainingConfig:
    """Defaults of ``emostream train`` / ``evaluate`` (flags override them).

    ``bn_recalibration_samples`` and ``bn_momentum`` are the batch-norm fix for
    small datasets described in ``training/model.py``.
    """

    arch: str = "recipe"
    input_size: int = 48
    color: Literal["gray", "rgb", "bgr"] = "gray"
    crop_margin: float = 0.15
    epochs: int = 50
    batch_size: int = 64
    learning_rate: float = 1e-4
    seed: int = 1337
    label_mode: Literal["majority", "soft"] = "majority"
    label_smoothing: float = 0.0
    merge_contempt: bool = True
    class_weights: bool = False
    augment: bool = True
    rotation_deg: float = 20.0
    shift: float = 0.1
    horizontal_flip: bool = True
    bn_momentum: Literal["auto"] | float = "auto"
    bn_recalibration_samples: int = 512
    early_stopping_patience: int = 10
    reduce_lr_patience: int = 5
    validation_split: float = 0.1
    test_split: float = 0.1

    def validate(self, key: str) -> None:
        _positive(self, key, "input_size", "epochs", "batch_size", "learning_rate")
        _non_negative(self, key, "rotation_deg", "early_stopping_patience", "reduce_lr_patience",
                      "bn_recalibration_samples")
        _unit_interval(self, key, "shift", "validation_split", "test_split", "crop_margin", "label_smoothing")
        if self.input_size < 16:
            raise ConfigError(f"{key}.input_size: must be >= 16, got {self.input_size}")
        if self.rotation_deg > 180:
            raise ConfigError(f"{key}.rotation_deg: must be <= 180, got {self.rotation_deg}")
        if self.bn_momentum != "auto" and not 0.0 < float(self.bn_momentum) < 1.0:
            raise ConfigError(f"{key}.bn_momentum: must be 'auto' or in (0, 1), got {self.bn_momentum}")
        if self.validation_split + self.test_split >= 1.0:
            raise ConfigError(f"{key}.validation_split + test_split: must be < 1, got "
                              f"{self.validation_split} + {self.test_split}")


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    capture: CaptureConfig = field(default_factory=CaptureConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """Return a copy with dotted keys replaced, validated like the file.

        Args:
            overrides: ``{"runtime.batch_size": 4, ...}``; ``None`` values are skipped.

        Raises:
            ConfigError: A key is unknown or a value invalid.
        """
        data = dataclasses.asdict(self)
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, name = dotted.partition(".")
            if section not in data or name not in data[section]:
                raise ConfigError(f"unknown config key '{dotted}'")
            data[section][name] = value
        return build_dataclass(Config, data, "")


def load_config(path: Path | None) -> Config:
    """Load ``path`` (YAML), or the defaults when ``path`` is None.

    Relative model paths in the file are resolved against the file's folder.

    Raises:
        ConfigError: The file is missing, not YAML, or holds an unknown key or bad value.
    """
    if path is None:
        return Config()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"config '{path}' could not be read: {err.strerror or err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"config '{path}' is not valid YAML: {str(err).splitlines()[0]}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config '{path}' must be a mapping of sections, got {type(data).__name__}")
    base = Path(path).resolve().parent
    for section in ("detector", "classifier"):
        model = (data.get(section) or {}).get("model") if isinstance(data.get(section), dict) else None
        if isinstance(model, str) and not Path(model).is_absolute():
            data[section]["model"] = str(base / model)
    return build_dataclass(Config, data, "", origin=str(path))


T = TypeVar("T")


def build_dataclass(cls: type[T], data: Any, key: str, *, origin: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping, checking keys, types and ranges.

    Args:
        cls: A dataclass type whose fields have simple annotations.
        data: The mapping read from YAML (or ``asdict`` output).
        key: Dotted key of ``data`` for messages (``""`` at the root).
        origin: Where the data came from, for messages.

    Raises:
        ConfigError: Unknown key, wrong type, or a ``validate`` check failed.
    """
    where = key or "top level"
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: '{where}' must be a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        dotted = f"{key}.{unknown[0]}" if key else unknown[0]
        raise ConfigError(f"{origin}: unknown config key '{dotted}' (known: {', '.join(sorted(names))})")
    values = {}
    for name, raw in data.items():
        dotted = f"{key}.{name}" if key else name
        values[name] = _coerce(hints[name], raw, dotted, origin)
    obj = cls(**values)
    check = getattr(obj, "validate", None)
    if check is not None:
        try:
            check(key)
        except ConfigError as err:
            raise ConfigError(f"{origin}: {err}") from None
    return obj


def _coerce(tp: Any, raw: Any, key: str, origin: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, raw, key, origin=origin)  # type: ignore[arg-type]
    org, args = get_origin(tp), get_args(tp)
    if org is Literal:
        if raw in args and type(raw) is type(next(a for a in args if a == raw)):
            return raw
        raise ConfigError(f"{origin}: '{key}' must be one of {', '.join(map(repr, args))}, got {raw!r}")
    if org in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _coerce(option, raw, key, origin)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{origin}: '{key}' has an invalid value {raw!r}")
    if org is tuple:
        if isinstance(raw, str) or not isinstance(raw, (list, tuple)):
            raise ConfigError(f"{origin}: '{key}' must be a list, got {_describe(raw)}")
        return tuple(_coerce(args[0], item, key, origin) for item in raw)
    if tp is bool:
        if isinstance(raw, bool):
            return raw
    elif tp is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
    elif tp is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
    elif tp is str:
        if isinstance(raw, str):
            return raw
    elif tp is Path and isinstance(raw, (str, Path)) and str(raw):
        return Path(raw)
    raise ConfigError(f"{origin}: '{key}' must be {_type_name(tp)}, got {_describe(raw)}")


def _type_name(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            Path: "a path"}.get(tp, str(tp))


def _describe(raw: Any) -> str:
    return f"{raw!r} ({type(raw).__name__})"


def _positive(obj: Any, key: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{key}.{name}: must be > 0, got {getattr(obj, name)}")


def _non_negative(obj: Any, key: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{key}.{name}: must be >= 0, got {getattr(obj, name)}")


def _unit_interval(obj: Any, key: str, *names: str) -> None:
    for name in names:
        if not 0.0 <= getattr(obj, name) <= 1.0:
            raise ConfigError(f"{key}.{name}: must be in [0, 1], got {getattr(obj, name)}")
