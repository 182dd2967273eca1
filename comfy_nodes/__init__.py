"""ICT-HP ComfyUI node pack (V3 schema).

ComfyUI loads the repository root (``custom_nodes/<pack>/__init__.py``), which re-exports
``comfy_entrypoint`` from here. Node ids are stable: ICTHPLoader, ICTHPScore, ICTHPBestOfN,
ICTHPLoraLoader, ICTHPTextEncoderSwap, ICTHPCLIPVision.
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .encoder_nodes import ICTHPCLIPVision, ICTHPTextEncoderSwap
from .lora_node import ICTHPLoraLoader
from .paths import register_model_folder
from .reward_nodes import ICTHPBestOfN, ICTHPLoader, ICTHPScore

NODES: list[type[io.ComfyNode]] = [
    ICTHPLoader,
    ICTHPScore,
    ICTHPBestOfN,
    ICTHPLoraLoader,
    ICTHPTextEncoderSwap,
    ICTHPCLIPVision,
]


class ICTHPExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> ICTHPExtension:
    register_model_folder()
    return ICTHPExtension()


__all__ = ["NODES", "ICTHPExtension", "comfy_entrypoint"]
