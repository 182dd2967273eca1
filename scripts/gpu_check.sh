#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py): <= 8 minutes on one H100/H200, report in OUT_DIR.
#   bash scripts/gpu_check.sh OUT_DIR [--parts env,parity,...] [--dry-run]
# Installs the wheels carried in .whl/ (scripts/prepare_gpu_wheels.sh: open_clip_torch, diffusers, ftfy, bitsandbytes,
# ...) offline into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:?usage: scripts/gpu_check.sh OUT_DIR [gpu_check.py options]}"
shift
PY="${PYTHON:-python3}"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1
exec "$PY" bench/gpu_check.py --out "$OUT_DIR" "$@"
