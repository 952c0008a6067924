#!/usr/bin/env bash
# The test suite. Sets up ./.venv if needed, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
python -m pytest -q "$@"
