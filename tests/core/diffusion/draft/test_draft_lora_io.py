"""Saved LoRA files reload in diffusers (`pipe.load_lora_weights`) with identical outputs; metadata as documented."""

from __future__ import annotations

import pytest
import torch
from draft_common import PROMPTS
from safetensors import safe_open

from icthp_core.diffusion.draft import FlowModel, encode_prompts, generate
from icthp_core.diffusion.lora import METADATA_KEYS, add_lora, read_lora_metadata, save_lora
from icthp_core.testing.diffusion import tiny_flux_pipeline, tiny_sd3_pipeline

MAKE = {"sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}


def _trained(arch: str, rank: int, alpha: float | None):
    pipe = MAKE[arch](seed=0)
    pipe.set_progress_bar_config(disable=True)
    model = FlowModel.from_pipeline(pipe)
    add_lora(model.transformer, rank, alpha)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.transformer.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return pipe, model


@pytest.mark.parametrize(
    ("arch", "alpha", "alpha_keys"),
    [("sd3", None, False), ("sd3", 16.0, False), ("flux", None, False), ("flux", 2.0, False), ("flux", 2.0, True)],
)
def test_lora_reloads_in_diffusers_identically(arch, alpha, alpha_keys, tmp_path):
    pipe, model = _trained(arch, 4, alpha)
    cond = encode_prompts(pipe, PROMPTS[:2], max_sequence_length=16)
    noise = model.noise(2, 32, 32, torch.Generator().manual_seed(0))
    ours = generate(model, noise, cond, 4)
    meta = {
        "icthp.base_model": "tiny",
        "icthp.reward": "ict_hp",
        "icthp.variant": "draft",
        "icthp.k": 1,
        "icthp.steps": 4,
    }
    path = save_lora(model.transformer, tmp_path, meta, alpha_keys=alpha_keys)

    fresh = MAKE[arch](seed=0)
    fresh.set_progress_bar_config(disable=True)
    base = generate(FlowModel.from_pipeline(fresh), noise, cond, 4)
    assert (base - ours).abs().max() > 1e-3  # the LoRA changes the output
    fresh.load_lora_weights(str(tmp_path))
    loaded = generate(FlowModel.from_pipeline(fresh), noise, cond, 4)
    assert (loaded - ours).abs().max().item() <= 1e-6

    with safe_open(str(path), framework="pt") as f:
        keys, fmeta = list(f.keys()), f.metadata()
    assert all(k.startswith("transformer.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight", ".alpha")) for k in keys)
    assert any(k.endswith(".alpha") for k in keys) == alpha_keys
    assert set(METADATA_KEYS) <= set(fmeta)
    info = read_lora_metadata(path)
    assert info["icthp.base_arch"] == arch and info["icthp.rank"] == "4" and info["icthp.k"] == "1"
    # the stored alpha always goes with the stored weights: folded files say alpha = rank
    assert float(info["icthp.alpha"]) == ((alpha or 4.0) if alpha_keys else 4.0)


def test_sd3_targets_attention_only_flux_also_ff(tmp_path):
    from safetensors.torch import load_file

    for arch, has_ff in (("sd3", False), ("flux", True)):
        _, model = _trained(arch, 2, None)
        keys = load_file(save_lora(model.transformer, tmp_path / arch)).keys()
        assert any(".ff.net." in k or ".ff_context." in k for k in keys) == has_ff
        assert all(".attn." in k or ".ff" in k for k in keys)


def test_rejects_unknown_metadata(tmp_path):
    _, model = _trained("sd3", 2, None)
    with pytest.raises(ValueError, match="unknown icthp metadata"):
        save_lora(model.transformer, tmp_path, {"icthp.colour": "red"})
