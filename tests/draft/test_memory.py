"""The DRaFT memory estimator against tensors counted on tiny SD3 / FLUX models (CPU)."""

from __future__ import annotations

import pytest
import torch

from icthp_core.diffusion.draft import FlowModel, encode_prompts, latent_image_ids, pack_latents
from icthp_core.diffusion.lora import add_lora
from icthp_core.diffusion.memory import (
    OPTIMIZER_STATE_BYTES,
    estimate_draft_memory,
    transformer_activation_bytes,
)
from icthp_core.testing.diffusion import tiny_flux_pipeline, tiny_sd3_pipeline

SIZE, STEPS, K = 32, 4, 2


def _saved_activation_bytes(model: FlowModel, cond) -> int:
    """Bytes of the distinct tensors autograd keeps for the backward of K differentiated steps (no parameters)."""
    storages: dict[int, int] = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    noise = model.noise(1, SIZE, SIZE, torch.Generator().manual_seed(0))
    sigmas, ts = model.schedule(STEPS, noise.shape[-2], noise.shape[-1], device="cpu")
    ids = latent_image_ids(noise.shape[-2], noise.shape[-1], "cpu") if model.arch == "flux" else None
    x = pack_latents(noise.float()) if model.arch == "flux" else noise.float()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for i in range(K):
            x = x + (sigmas[i + 1] - sigmas[i]) * model.velocity(x, ts[i], cond, ids)
    params = {p.untyped_storage().data_ptr() for p in model.transformer.parameters()}
    return sum(n for ptr, n in storages.items() if ptr not in params)


@pytest.mark.parametrize("make", [tiny_sd3_pipeline, tiny_flux_pipeline], ids=["sd3", "flux"])
def test_activation_terms_match_counted_tensors(make):
    torch.manual_seed(0)
    pipe = make()
    cond = encode_prompts(pipe, ["a photo of a cat"], max_sequence_length=16)
    model = FlowModel.from_pipeline(pipe)
    add_lora(model.transformer, 4)
    vae_scale = 2 ** (len(model.vae.config.block_out_channels) - 1)
    text = cond.prompt_embeds.shape[1]
    for ckpt in (False, True):
        if ckpt:
            model.transformer.enable_gradient_checkpointing()
        counted = _saved_activation_bytes(model, cond)
        stored, transient = transformer_activation_bytes(model.transformer, SIZE, SIZE, K, 1, text, 4, ckpt, vae_scale)
        # the 34·s·h rule and the checkpointed block inputs, against what autograd really keeps
        assert 0.5 * counted <= stored <= 2.5 * counted, (ckpt, counted, stored)
        assert (transient > 0) == ckpt
    no_ck = transformer_activation_bytes(model.transformer, SIZE, SIZE, K, 1, text, 4, False, vae_scale)[0]
    assert stored < no_ck / 4  # checkpointing keeps far less


def test_weights_and_optimizer_terms_are_exact():
    torch.manual_seed(0)
    pipe = tiny_sd3_pipeline()
    model = FlowModel.from_pipeline(pipe)
    model.transformer.requires_grad_(False)
    model.vae.requires_grad_(False)
    params = add_lora(model.transformer, 4)
    frozen = sum(
        p.numel() * p.element_size()
        for m in (model.transformer, model.vae)
        for p in m.parameters()
        if not p.requires_grad
    )
    n_lora = sum(p.numel() for p in params)
    est = estimate_draft_memory(model.transformer, model.vae, height=SIZE, width=SIZE, k=K, act_bytes=4)
    assert est.weights * 2**30 == pytest.approx(frozen)
    # AdamW after one step: fp32 params + grads + exp_avg + exp_avg_sq, exactly what the estimate counts
    opt = torch.optim.AdamW(params)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if t.dim() > 0)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in params)
    assert est.lora_and_optimizer * 2**30 == pytest.approx(n_lora * 4 + grads + state)
    est8 = estimate_draft_memory(
        model.transformer, model.vae, height=SIZE, width=SIZE, k=K, act_bytes=4, optimizer="adamw8bit"
    )
    assert est8.lora_and_optimizer * 2**30 == pytest.approx(n_lora * (8 + OPTIMIZER_STATE_BYTES["adamw8bit"]))
    with pytest.raises(ValueError, match="optimizer"):
        estimate_draft_memory(model.transformer, model.vae, optimizer="sgd")
    assert est.total == pytest.approx(
        est.weights + est.lora_and_optimizer + est.transformer_activations + est.vae_decode + est.reward
    )


def test_offload_peak_is_the_largest_phase():
    """offload_frozen: each phase holds only its own frozen weights; the total is the largest phase."""
    torch.manual_seed(0)
    pipe = tiny_sd3_pipeline()
    model = FlowModel.from_pipeline(pipe)
    model.transformer.requires_grad_(False)
    params = add_lora(model.transformer, 4)
    towers = [torch.nn.Linear(64, 64).requires_grad_(False)]
    kw = dict(height=SIZE, width=SIZE, k=K, act_bytes=4, text_tokens=16)
    plain = estimate_draft_memory(model.transformer, model.vae, towers, **kw)
    off = estimate_draft_memory(model.transformer, model.vae, towers, **kw, offload_frozen=True)
    t_w = sum(p.numel() * p.element_size() for p in model.transformer.parameters() if not p.requires_grad) / 2**30
    d_w = sum(p.numel() * p.element_size() for m in (model.vae, *towers) for p in m.parameters()) / 2**30
    lora = sum(p.numel() for p in params) * 16 / 2**30  # fp32 param + grad + 2 AdamW moments
    vae_scale = 2 ** (len(model.vae.config.block_out_channels) - 1)
    stored, transient = (
        b / 2**30 for b in transformer_activation_bytes(model.transformer, SIZE, SIZE, K, 1, 16, 4, True, vae_scale)
    )
    assert set(off.phases) == {"sampling", "reward", "backward"} and plain.phases == {}
    assert off.phases["sampling"] == pytest.approx(t_w + lora + stored + transient)
    assert off.phases["backward"] == off.phases["sampling"]
    assert off.phases["reward"] == pytest.approx(d_w + lora + stored + off.vae_decode + off.reward)
    assert off.total == pytest.approx(max(off.phases.values()))
    assert off.total < plain.total
    # the terms stay the same (what each part needs while resident); the dict / table show the phases
    assert off.as_dict()["weights"] == plain.as_dict()["weights"] and "phase_reward" in off.as_dict()
    assert "phases" not in plain.as_dict() and "phase: reward" in off.table() and "max over phases" in off.table()
    with pytest.raises(ValueError, match="checkpointing"):
        estimate_draft_memory(model.transformer, model.vae, **kw, checkpointing=False, offload_frozen=True)
