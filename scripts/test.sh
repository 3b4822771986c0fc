#!/usr/bin/env bash
# Set up, then run the whole test suite (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --faces  # the tests cover the optional face-parts extra too
# shellcheck disable=SC1091
. .venv/bin/activate
IMPASTO_OFFLINE=1 python -m pytest -q "$@"
