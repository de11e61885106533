"""``emostream models``, ``emostream config`` and ``emostream bench``: what ships, the defaults, the benchmark."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from stream.commands.common import EXIT_OK, say
from stream.config import DEFAULT_CONFIG, MODELS_DIR
from stream.errors import ConfigError, StreamError

__all__ = ["register", "run_bench"]

#: ``emostream bench`` runs the benchmark of a source checkout (benchmarks/ is not in the wheel).
_FPS_SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fps.py"


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``models``, ``config`` and ``bench`` to the ``emostream`` subcommands."""
    models = sub.add_parser("models", help="the shipped models: what each is, its input and labels",
                            description="List the models shipped with emostream (use a name with --model or "
                                        "--detector, or in a config's model: key).")
    models.set_defaults(func=_cmd_models)
    config = sub.add_parser("config", help="print the default configuration (every key, documented)",
                            description="Print the shipped config.yaml: `emostream config > my.yaml`, edit, "
                                        "then `emostream run --config my.yaml`.")
    config.set_defaults(func=_cmd_config)
    bench = sub.add_parser("bench", help="FPS benchmark (benchmarks/fps.py of a source checkout)", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=run_bench)


def _cmd_models(args: argparse.Namespace) -> int:
    from stream.infer import EmotionClassifier, FaceDetector
    from stream.infer.yunet import YUNET_FILE, YuNet

    for path in sorted(MODELS_DIR.glob("*.onnx")):
        size = f"{path.stat().st_size / 1e6:.1f} MB"
        try:
            if path.name.startswith("blazeface"):
                detector = FaceDetector.from_path(path, strategy="single")
                side = detector.input_size
                print(f"{path.stem:34} detector    {size:>8}  input {side}x{side}")
            elif path.name == YUNET_FILE:
                YuNet.from_path(path)
                print(f"{path.stem:34} detector    {size:>8}  input: the whole frame (for large frames: "
                      "detector.strategy)")
            else:
                contract = EmotionClassifier.from_path(path).contract
                w, h = contract.input_size_wh
                extras = " flip-averaged" if contract.flip_average else ""
                print(f"{path.stem:34} classifier  {size:>8}  input {w}x{h} {contract.color}, "
                      f"T {contract.temperature:.2f}{extras}; labels: {', '.join(contract.labels)}")
        except StreamError as err:
            say(f"{path.stem}: could not be loaded: {err}")
    print(f"(in {MODELS_DIR}; accuracy and cost of each: the project's models/README.md)")
    return EXIT_OK


def _cmd_config(args: argparse.Namespace) -> int:
    sys.stdout.write(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    return EXIT_OK


def run_bench(args: argparse.Namespace) -> int:
    """``emostream bench ARGS``: benchmarks/fps.py ARGS in a child process."""
    if not _FPS_SCRIPT.is_file():
        raise ConfigError("emostream bench runs benchmarks/fps.py of a source checkout: clone the repository")
    return subprocess.call([sys.executable, str(_FPS_SCRIPT), *args.bench_args])
