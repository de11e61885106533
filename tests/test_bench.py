"""The FPS benchmark stays runnable: a tiny clip end to end, the CLI entry, provider selection and fallback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import REPO, ffmpeg, run_cli

BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))

import fps  # noqa: E402


@pytest.fixture(scope="module")
def tiny_clip(carphone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "tiny.mp4"
    ffmpeg("-i", str(carphone), "-vf", "scale=320:240", "-frames:v", "30", "-c:v", "libx264", "-preset", "veryfast",
           "-pix_fmt", "yuv420p", "-an", str(out))
    return out


def _positive(x: object) -> bool:
    return isinstance(x, (int, float)) and x > 0


@pytest.mark.slow
def test_benchmark_runs_on_a_tiny_clip(tiny_clip: Path, tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "fps.py"), str(tiny_clip), "--frames", "20", "--repeats", "1",
         "--batch-sizes", "1,4", "--providers", "cpu,cuda", "--json", str(out_json), "--plot", str(out_png),
         "--cache-dir", str(tmp_path / "cache"), "--quiet"],
        capture_output=True, text=True, timeout=150, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== tiny:" in proc.stdout and "decode + encode" in proc.stdout and "bottleneck" in proc.stdout
    report = json.loads(out_json.read_text())
    assert out_png.stat().st_size > 1000
    assert report["machine"]["cpu_count"] >= 1 and report["providers"][0] == "cpu"
    assert report["targets"] == []  # only the bundled clips have targets
    (clip,) = report["clips"]
    assert clip["clip"]["frames_used"] == 20

    assert _positive(clip["io"]["decode"]["fps"]) and _positive(clip["io"]["decode_encode"]["fps"])
    assert {(r["reader"], r["work"]) for r in clip["capture"]} == {
        (reader, work) for reader in ("naive", "imutils", "ours") for work in (False, True)}
    assert all(r["frames"] == 20 and _positive(r["fps"]) for r in clip["capture"])

    stages = clip["stages"]["cpu"]
    assert {(r["stage"], r["batch"]) for r in stages} >= {("detect", 1), ("detect", 4), ("classify", 1),
                                                           ("classify", 4), ("crop", None), ("annotate", None)}
    assert all(_positive(r["ms_per_frame"]) for r in stages)
    assert all(_positive(r["ms_per_face"]) for r in stages if r["stage"] == "classify")

    off, on = clip["pipeline"]["cpu"]
    assert (off["recording"], on["recording"]) == (False, True)
    assert all(_positive(r["fps"]) and r["frames"] == 20 for r in (off, on))
    assert on["faces_per_frame"]["any"] >= 0.9  # carphone: a face in every frame
    assert set(clip["bottleneck"]["cpu"]) == {"recording_off", "recording_on"}

    peers = {p["name"]: p for p in clip["peers"]}
    assert set(peers) == {"fer", "seed loop"}
    for p in peers.values():  # measured, or skipped with the reason
        assert _positive(p.get("fps")) or p.get("skipped")


def test_bench_subcommand_help() -> None:
    proc = run_cli("bench", "--help", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--batch-sizes" in proc.stdout and "--providers" in proc.stdout


def test_bench_subcommand_reaches_the_benchmark() -> None:
    proc = run_cli("bench", "/no/such/clip.mp4", "--quiet", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "VIDEO '/no/such/clip.mp4' could not be opened: no such file" in proc.stderr


@pytest.mark.parametrize("argv, fragment", [
    (["/no/such/clip.mp4"], "no such file"),
    (["--batch-sizes", "0,4"], "positive integers"),
    (["--providers", "cpu,tpu"], "expected providers"),
    (["--frames", "-3"], "positive integer"),
])
def test_bad_input_is_one_line_exit_2(argv: list[str], fragment: str, capsys: pytest.CaptureFixture) -> None:
    assert fps.main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err


def test_cuda_is_reported_not_measured_without_a_gpu() -> None:
    if "CUDAExecutionProvider" in fps.resolve_providers(("cuda",)):
        pytest.skip("this machine can run CUDA")
    usable, notes = fps.usable_providers(["cpu", "cuda"])
    assert usable == ["cpu"]
    assert notes == ["cuda: not available on this machine"]


def test_provider_that_falls_back_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # ONNX Runtime builds with CUDA but no usable GPU: the session silently runs on CPU.
    monkeypatch.setattr(fps, "resolve_providers", lambda wanted: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    session = SimpleNamespace(get_providers=lambda: ["CPUExecutionProvider", "CUDAExecutionProvider"][:1])
    fake = SimpleNamespace(detector=SimpleNamespace(session=session), classifier=SimpleNamespace(session=session))
    monkeypatch.setattr(fps, "load_models", lambda config: fake)
    assert fps.usable_providers(["cuda", "cpu"]) == (["cuda", "cpu"], [])
    models, why = fps.load_for(fps.Config(), "cuda")
    assert models is None and why.startswith("cuda: not available on this machine")
    models, why = fps.load_for(fps.Config(), "cpu")
    assert models is fake and why == ""


@pytest.mark.slow
@pytest.mark.parametrize("with_ffmpeg", [True, False])
def test_default_clips(with_ffmpeg: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import _clips

    if not with_ffmpeg:  # what `make demo` alone gives: OpenCV writes mp4v
        monkeypatch.setattr(_clips, "ffmpeg_exe", lambda: None)
    vga, quad = _clips.make_clips(tmp_path)
    assert (vga.name, vga.size_wh, vga.frames, vga.faces_per_frame) == ("vga", (640, 480), 601, 1)
    assert (quad.name, quad.size_wh, quad.frames, quad.faces_per_frame) == ("quad", (1280, 720), 120, 4)
    assert ("mp4v" in vga.about) != with_ffmpeg
    assert _clips.make_clips(tmp_path) == [vga, quad]  # cached: made once
