"""``pip install`` gives a program that runs: the built wheel, installed in a fresh virtualenv, runs
``emostream run`` on the bundled sample from a folder that is not the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools writes build/ and *.egg-info into the tree it builds, and tests
    # never write into the repository.
    src = tmp_path_factory.mktemp("src") / "emostream"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "out", "runs", "*.egg-info", "__pycache__", ".*_cache"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("emostream-*.whl")
    return built


def test_the_wheel_carries_the_models_config_and_sample(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("stream/config.yaml", "stream/models/blazeface_short_range.onnx",
                   "stream/models/emotion_ferplus_resnet.onnx", "stream/assets/carphone_640x480.mp4",
                   "stream/commands/__init__.py", "stream/serve/page.html"):
        assert needed in names, needed
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)


def test_installed_wheel_runs_from_another_folder(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    # The wheel itself goes into the fresh environment; its dependencies are this environment's
    # (a path line in a .pth file: the editable install's own finder in that folder is not loaded).
    with zipfile.ZipFile(wheel) as whl:
        whl.extractall(site)
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run([str(python), "-m", "stream", "run", "--no-display", "--no-progress", "--max-frames", "12"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    where = subprocess.check_output([str(python), "-c", "import stream; print(stream.__file__)"], cwd=work, env=env,
                                    text=True)
    assert where.startswith(str(site)), where  # the installed copy ran, not the checkout
    lines = (work / "out" / "carphone_640x480.events.jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["faces"]
    assert (work / "out" / "carphone_640x480.annotated.mp4").stat().st_size > 0
    listing = subprocess.run([str(python), "-m", "stream", "models"], cwd=work, env=env, capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0 and "emotion_ferplus_resnet" in listing.stdout, listing.stderr
    assert "yunet" in listing.stdout and "could not be loaded" not in listing.stderr, listing.stderr
    shown = subprocess.run([str(python), "-m", "stream", "config"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0 and "detector:" in shown.stdout
    # A config copied elsewhere still finds the shipped models by their names.
    (work / "my.yaml").write_text(shown.stdout)
    again = subprocess.run([str(python), "-m", "stream", "run", "--no-display", "--no-progress", "--max-frames", "3",
                            "--config", "my.yaml", "--out-dir", "second"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
