"""ComfyUI entry point: ComfyUI imports this file when the repository sits in ``ComfyUI/custom_nodes/``.

Importing it has no side effect beyond making ``icthp_core`` importable; the V3 ``comfy_entrypoint``
imports ``comfy_nodes`` (and so ComfyUI) only when ComfyUI calls it. There is deliberately no
``NODE_CLASS_MAPPINGS`` here: ComfyUI would then ignore ``comfy_entrypoint``.
"""

import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


#: ComfyUI serves this folder to the browser (a small extension that shows node results as text).
WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    """V3 entry point called by ComfyUI: returns the ICT-HP ``ComfyExtension``."""
    from .comfy_nodes import comfy_entrypoint as entrypoint

    return await entrypoint()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
