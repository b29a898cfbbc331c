#!/usr/bin/env bash
# Create .venv with hf_pvt installed (editable) and its dev tools. torch is pinned to the CPU build
# available here first, so that the unpinned dependency below never pulls the multi-GB CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -d .venv ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
