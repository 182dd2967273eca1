#!/usr/bin/env bash
# Download the wheels the GPU machine lacks (its Python 3.12 image has torch, torchvision, transformers, timm, peft,
# accelerate, regex, safetensors, huggingface_hub, but not open_clip_torch, diffusers, ftfy, wcwidth,
# importlib_metadata or bitsandbytes; see /work/.library/device/KINDS.md) into DEST (default .whl/, git-ignored), for
# Python 3.12 manylinux x86_64, no dependencies resolved beyond this list. About 50 MiB in all (49.5 MiB
# measured): 9 MiB for the first five + 41 MiB for bitsandbytes (8-bit AdamW of the draft_lowmem part; it carries
# its kernels for every CUDA version). The device carry limit is 64 MiB, so the script fails above 56 MiB.
# Ray is not carried: its cp312 manylinux wheel (ray 2.60.0) is 75.6 MiB on its own, above the 64 MiB carry
# limit, so the serve part of bench/gpu_check.py (icthp serve, --engine ray) skips on the GPU machine, saying so.
#   bash scripts/prepare_gpu_wheels.sh [DEST]
# scripts/gpu_check.sh installs them offline on the GPU machine:
#   pip install --no-index --no-deps --target /tmp/site DEST/*.whl
set -euo pipefail
DEST="${1:-.whl}"
PY="${PYTHON:-python3}"
mkdir -p "$DEST"
# versions pinned to the ones this project is tested with (pip show in the dev venv)
WHEELS=(open_clip_torch==3.3.0 diffusers==0.42.1 ftfy==6.3.1 wcwidth==0.9.4 importlib_metadata==8.7.0
  bitsandbytes==0.50.2)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 \
  --platform any -d "$DEST" "${WHEELS[@]}"
du -sh "$DEST"
ls "$DEST"
KIB=$(du -sk "$DEST" | cut -f1)
if [ "$KIB" -gt $((56 * 1024)) ]; then
  echo "$DEST: ${KIB} KiB of wheels, over the 56 MiB budget (device carry limit 64 MiB)" >&2
  exit 1
fi
