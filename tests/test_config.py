"""Config: the shipped file equals the defaults; bad values and unknown keys name their key."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream.config import DEFAULT_CONFIG, Config, load_config
from stream.errors import ConfigError


def test_shipped_config_matches_defaults() -> None:
    loaded = load_config(DEFAULT_CONFIG)
    assert loaded == Config()  # the documented file and the code never drift apart


def test_relative_model_paths_resolve_against_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("classifier:\n  model: my.onnx\n")
    assert load_config(cfg).classifier.model == tmp_path / "my.onnx"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("runtime:\n  batch_size: 0\n", "runtime.batch_size: must be > 0"),
        ("runtime:\n  batch_size: two\n", "'runtime.batch_size' must be an integer"),
        ("runtime:\n  batch_size: true\n", "'runtime.batch_size' must be an integer"),
        ("runtime:\n  providers: cuda\n", "'runtime.providers' must be a list"),
        ("runtime:\n  providers: [gpu]\n", "'runtime.providers' must be one of"),
        ("runtime:\n  providers: []\n", "runtime.providers: must name at least one provider"),
        ("capture:\n  rtsp_transport: http\n", "'capture.rtsp_transport' must be one of"),
        ("detector:\n  score_threshold: 1.5\n", "detector.score_threshold: must be in [0, 1]"),
        ("tracking:\n  smoothing_alpha: 0\n", "tracking.smoothing_alpha: must be in (0, 1]"),
        ("output:\n  codec: h264x\n",
         "output.codec: must be h264, mpeg4 (crash-safe fragmented MP4) or an OpenCV four-character code"),
        ("training:\n  bn_momentum: fast\n", "'training.bn_momentum' has an invalid value"),
        ("training:\n  input_size: 8\n", "training.input_size: must be >= 16"),
        ("runtme:\n  batch_size: 4\n", "unknown config key 'runtme'"),
        ("runtime:\n  batchsize: 4\n", "unknown config key 'runtime.batchsize'"),
        ("- a\n- b\n", "must be a mapping of sections"),
        ("runtime: [\n", "not valid YAML"),
    ],
)
def test_bad_config_names_the_key(text: str, message: str, tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_are_validated_like_the_file() -> None:
    config = Config().with_overrides({"runtime.batch_size": 4, "runtime.providers": ["cpu"], "detector.model": None})
    assert config.runtime.batch_size == 4 and config.runtime.providers == ("cpu",)
    assert config.detector.model == Config().detector.model
    with pytest.raises(ConfigError, match=r"runtime\.batch_size"):
        Config().with_overrides({"runtime.batch_size": -1})
    with pytest.raises(ConfigError, match=r"unknown config key 'runtime\.nope'"):
        Config().with_overrides({"runtime.nope": 1})


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "empty.yaml"
    cfg.write_text("# nothing\n")
    assert load_config(cfg) == Config()


def test_unquoted_on_off_read_as_the_words(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("runtime:\n  batch_buckets: off\n  uint8_input: on\noutput:\n  display: off\n")
    config = load_config(path)
    assert (config.runtime.batch_buckets, config.runtime.uint8_input, config.output.display) == ("off", "on", "off")
