#!/usr/bin/env bash
# Create ./.venv with regime-dmm and its test extras. Safe to run again (it only adds what is missing).
# torch is installed first and pinned to 2.13.0: its CPU build installs from the machine's disk,
# while an unpinned torch would download a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet "torch==2.13.0"
fi
python -m pip install --quiet -e ".[test]"
