#!/usr/bin/env bash
# Test reference for the ImageReward parity tests (tests/core/scoring/test_blip_models.py): the `image-reward` PyPI
# package's own model code. Installed without its dependencies: it pins timm==0.6.13 and fairscale and pulls
# datasets/diffusers; the tests import only its model modules, which need timm (already here via open_clip) and
# fairscale (pure Python).
set -euo pipefail
python -m pip install -q --no-deps "image-reward==1.5" "fairscale==0.4.13"
