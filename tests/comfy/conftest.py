"""Fixtures for the ComfyUI node-pack tests: real ComfyUI 0.3.75 imported in-process.

The ComfyUI tree is prepared by ``tests/comfy/setup_comfyui.sh`` (run here once per session; idempotent).
Set ``ICTHP_COMFYUI_DIR`` to use an existing ComfyUI 0.3.75 tree instead.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = Path(__file__).with_name("setup_comfyui.sh")


def comfyui_dir() -> Path:
    env = os.environ.get("ICTHP_COMFYUI_DIR")
    if env:
        return Path(env)
    target = ROOT / ".cache" / "comfyui"
    if not (target / "comfyui_version.py").is_file():
        subprocess.run(
            ["bash", str(SETUP)], check=True, env={**os.environ, "PYTHON": sys.executable}, timeout=900
        )
    return target


@pytest.fixture(scope="session")
def comfy_root() -> Path:
    """Path of the ComfyUI tree, importable (appended to sys.path), CPU mode set before model_management."""
    root = comfyui_dir()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    if str(root) in sys.path:
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    # pytest imports the repository root (it has an __init__.py for ComfyUI) under the checkout's folder
    # name and puts its parent on sys.path; a checkout named "comfy" would then shadow ComfyUI's ``comfy``
    # (a namespace package, which loses to any regular package of that name on sys.path).
    spec = importlib.util.find_spec("comfy") if "comfy" not in sys.modules else None
    stale = sys.modules.get("comfy")
    if (stale is not None and not str(getattr(stale, "__path__", [""])[0]).startswith(str(root))) or (
        spec is not None and spec.origin is not None
    ):
        ns = importlib.machinery.ModuleSpec("comfy", None, is_package=True)
        ns.submodule_search_locations = [str(root / "comfy")]
        sys.modules["comfy"] = importlib.util.module_from_spec(ns)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args.cpu at import)

    return root


@pytest.fixture(scope="session")
def pack(comfy_root):
    """The imported ``comfy_nodes`` package."""
    import comfy_nodes

    return comfy_nodes
