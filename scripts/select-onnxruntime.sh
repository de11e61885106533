#!/usr/bin/env bash
# Installs the ONNX Runtime build that fits this machine into the venv whose python is $1:
#   an NVIDIA driver present  -> onnxruntime-gpu with its CUDA/cuDNN pip packages (the `gpu` extra)
#   otherwise                 -> plain onnxruntime (CPU; also what macOS and ARM get)
# The two share the module name `onnxruntime` and must never be installed together.
set -euo pipefail
py="$1"
pip=("$py" -m pip --disable-pip-version-check -q)
installed() { "$py" -m pip show "$1" >/dev/null 2>&1; }

if command -v nvidia-smi >/dev/null 2>&1 || [[ -e /dev/nvidiactl ]]; then
  installed onnxruntime && "${pip[@]}" uninstall -y onnxruntime
  "${pip[@]}" install 'onnxruntime-gpu[cuda,cudnn]>=1.20' 'onnx>=1.16'
  echo "setup: NVIDIA driver found: onnxruntime-gpu installed"
else
  if installed onnxruntime-gpu; then
    "${pip[@]}" uninstall -y onnxruntime-gpu
    "${pip[@]}" install --force-reinstall --no-deps 'onnxruntime>=1.20'
  fi
fi
