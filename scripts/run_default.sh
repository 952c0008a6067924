#!/usr/bin/env bash
# The main job on the embedded default (simulated traditional vs tokenized real estate).
# Sets up ./.venv if needed, then writes regimes, summary, history, checkpoint and plots to runs/default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
regime-dmm fit --out runs/default --overwrite "$@"
