#!/usr/bin/env bash
# The main job, offline: set up, then stylise example images into out/demo (results + contact sheet).
# Extra arguments go to 'impasto demo' (e.g. --size 256 --pairs 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
IMPASTO_OFFLINE=1 impasto demo -o out/demo "$@"
