"""ICT-HP ComfyUI node pack (V3 schema).

ComfyUI loads the repository root (``custom_nodes/<pack>/__init__.py``), which re-exports
``comfy_entrypoint`` from here. ``NODES`` below is the one list of nodes; each node id is its class name and
stays stable once published (tests/test_one_list.py checks the tests' list and ``web/icthp.js`` against it).
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .early_nodes import ICTHPEarlyBestOfN
from .encoder_nodes import ICTHPCLIPVision, ICTHPTextEncoderSwap
from .explain_node import ICTHPExplain
from .lora_node import ICTHPLoraLoader
from .manager_nodes import ICTHPModelManager
from .metadata_nodes import ICTHPSaveWithScores
from .paths import register_model_folder
from .reward_nodes import ICTHPBestOfN, ICTHPLoader, ICTHPScore
from .selection_nodes import ICTHPRewardMix, ICTHPSelect

NODES: list[type[io.ComfyNode]] = [
    ICTHPLoader,
    ICTHPScore,
    ICTHPBestOfN,
    ICTHPLoraLoader,
    ICTHPTextEncoderSwap,
    ICTHPCLIPVision,
    ICTHPEarlyBestOfN,
    ICTHPRewardMix,
    ICTHPSelect,
    ICTHPSaveWithScores,
    ICTHPModelManager,
    ICTHPExplain,
]


class ICTHPExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> ICTHPExtension:
    register_model_folder()
    return ICTHPExtension()


__all__ = ["NODES", "ICTHPExtension", "comfy_entrypoint"]
