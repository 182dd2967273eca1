"""ICTHPExplain in process (as ComfyUI runs it: under torch.inference_mode, model loaded by ModelPatcher)."""

import pytest
import torch

pytestmark = [pytest.mark.comfyui]


@pytest.fixture(scope="module")
def reward_model(icthp_folder):
    from comfy_nodes.reward_nodes import ICTHPLoader

    with torch.inference_mode():  # as the server runs the loader node
        (rm,) = ICTHPLoader.execute(model="ICT-HP", ict_source="ict", hp_source="hp", device="cpu", dtype="fp32").result
    return rm


@pytest.mark.parametrize("method", ["occlusion", "relevance"])
def test_explain_node_under_inference_mode(reward_model, method):
    from comfy_nodes.explain_node import ICTHPExplain

    images = torch.rand(2, 96, 128, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = ICTHPExplain.execute(reward_model, images, "a red cube, photo", method=method, grid=2, ig_steps=2)
    overlays, table = out.result
    assert overlays.shape == (2, 96, 128, 3) and overlays.dtype == torch.float32
    assert not torch.equal(overlays, images)
    assert table.splitlines()[0].startswith("#0 ict_hp=") and "red" in table
