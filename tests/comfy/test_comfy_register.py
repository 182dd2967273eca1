"""The pack registers in real ComfyUI through the repository root's ``comfy_entrypoint``."""

import asyncio
import inspect
from pathlib import Path

import pytest

from tests.test_one_list import comfy_node_ids

pytestmark = [pytest.mark.comfyui]

ROOT = Path(__file__).resolve().parents[2]

NODE_IDS = comfy_node_ids()  # read from comfy_nodes.NODES (no ComfyUI import at collection)


def test_node_ids_are_the_class_names(pack):
    assert [n.GET_SCHEMA().node_id for n in pack.NODES] == NODE_IDS == [n.__name__ for n in pack.NODES]


def test_root_entrypoint_is_v3_only():
    text = (ROOT / "__init__.py").read_text()
    assert "NODE_CLASS_MAPPINGS" not in text.replace("no\n``NODE_CLASS_MAPPINGS``", "")


def test_comfyui_loads_repo_root_as_custom_node(comfy_root):
    import folder_paths
    import nodes

    ok = asyncio.run(nodes.load_custom_node(str(ROOT)))
    assert ok
    for node_id in NODE_IDS:
        cls = nodes.NODE_CLASS_MAPPINGS[node_id]
        info = cls.GET_NODE_INFO_V1()
        assert info["name"] == node_id and info["category"] == "ICT-HP"
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id].startswith("ICT-HP")
    assert "icthp" in folder_paths.folder_names_and_paths
    assert any(p.endswith("icthp") for p in folder_paths.get_folder_paths("icthp"))


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_schema_is_valid(pack, node_id):
    node = {n.GET_SCHEMA().node_id: n for n in pack.NODES}[node_id]
    schema = node.GET_SCHEMA()
    schema.validate()
    assert schema.outputs, node_id
    params = inspect.signature(node.execute).parameters
    for inp in schema.inputs:
        assert inp.id in params, f"{node_id}.execute lacks input {inp.id}"
