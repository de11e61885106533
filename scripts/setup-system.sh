#!/usr/bin/env bash
# System packages emostream needs, installed with apt when missing (or named, when we cannot install).
#   scripts/setup-system.sh          what running the stream needs (opencv-python: libGL, GLib)
#   scripts/setup-system.sh --test   plus what the tests need (ffmpeg, GStreamer's RTSP server, chromium, mosquitto)
set -euo pipefail

packages=(libgl1 libglib2.0-0)
if [[ "${1:-}" == "--test" ]]; then
  packages+=(ffmpeg python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
             gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
             chromium   # chromium: the dashboard's browser test (Playwright drives /usr/bin/chromium)
             mosquitto mosquitto-clients)  # the MQTT tests start a real broker (tests/test_mqtt.py)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null; then
  echo "setup: please install the system packages: ${missing[*]} (no apt-get here)" >&2
  exit 1
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then sudo="sudo"; else
    echo "setup: missing system packages: ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
echo "setup: installing system packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
