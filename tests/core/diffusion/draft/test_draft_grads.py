"""Gradients reach only the LoRA parameters, and only through the steps each variant promises."""

from __future__ import annotations

import random

import pytest
import torch
from draft_common import PROMPTS

from icthp_core.diffusion.draft import DraftConfig, FlowModel, draft_step, encode_prompts, reward_loss, sample
from icthp_core.diffusion.lora import add_lora

pytestmark = [pytest.mark.slow]


def mean_reward(images, prompts):
    """A tiny differentiable reward: mean brightness."""
    return images.mean(dim=(1, 2, 3))


def _setup(pipe, rank=4, perturb=True):
    model = FlowModel.from_pipeline(pipe)
    params = add_lora(model.transformer, rank)
    if perturb:  # lora_B starts at 0; make it non-zero so lora_A gets gradients too
        g = torch.Generator().manual_seed(5)
        for n, p in model.transformer.named_parameters():
            if "lora_B" in n:
                p.data = 0.05 * torch.randn(p.shape, generator=g)
    cond = encode_prompts(pipe, PROMPTS[:2], max_sequence_length=16)
    noise = model.noise(2, 32, 32, torch.Generator().manual_seed(0))
    return model, params, cond, noise


class CallRecorder:
    """Records, for every transformer call, the batch size and whether its output is part of a graph."""

    def __init__(self, module):
        self.calls: list[tuple[int, bool]] = []
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, mod, args, kwargs_or_out, out=None):
        o = out if out is not None else kwargs_or_out
        t = o[0] if isinstance(o, tuple) else o.sample
        self.calls.append((t.shape[0], t.requires_grad))


def test_gradients_reach_only_lora(pipe):
    model, params, cond, noise = _setup(pipe)
    res = draft_step(model, mean_reward, PROMPTS[:2], cond, noise, DraftConfig(num_steps=4, k=2))
    res.loss.backward()
    lora_ids = {id(p) for p in params}
    for n, p in model.transformer.named_parameters():
        if id(p) in lora_ids:
            assert p.dtype == torch.float32 and p.grad is not None, n
        else:
            assert not p.requires_grad and p.grad is None, n
    for n, p in model.vae.named_parameters():
        assert p.grad is None, n
    dead = {n for n, p in model.transformer.named_parameters() if p.requires_grad and p.grad.abs().sum() == 0}
    # SD3's last block is context_pre_only: its context-query projection does not reach the output
    last = len(model.transformer.transformer_blocks) - 1
    expected = (
        {f"transformer_blocks.{last}.attn.add_q_proj.lora_{x}.default.weight" for x in "AB"}
        if model.arch == "sd3"
        else set()
    )
    assert dead == expected


@pytest.mark.parametrize("k", [0, 1, 3])
def test_graph_only_through_last_k_steps(sd3_pipe, k):
    model, _, cond, noise = _setup(sd3_pipe)
    rec = CallRecorder(model.transformer)
    out = sample(model, noise, cond, DraftConfig(num_steps=5, k=k))
    assert [g for _, g in rec.calls] == [False] * (5 - k) + [True] * k
    assert out.grad_steps == list(range(5 - k, 5))
    assert out.images.requires_grad == (k > 0)
    if k == 0:
        assert out.images.grad_fn is None
        res = draft_step(model, mean_reward, PROMPTS[:2], cond, noise, DraftConfig(num_steps=5, k=0))
        assert res.loss.grad_fn is None


def test_lora_gradient_equals_detached_diffusers_reference(sd3_pipe):
    """Our K-step gradient equals backprop through diffusers' own scheduler from the pipeline's latents at N−K."""
    n, k = 4, 2
    model, params, cond, noise = _setup(sd3_pipe)
    res = draft_step(model, mean_reward, PROMPTS[:2], cond, noise, DraftConfig(num_steps=n, k=k))
    res.loss.backward()
    ours = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None

    captured = {}

    def grab(pipe, i, t, kw):
        if i == n - k - 1:
            captured["x"] = kw["latents"].detach().clone()
        return {}

    sd3_pipe(
        PROMPTS[:2],
        num_inference_steps=n,
        guidance_scale=0.0,
        height=32,
        width=32,
        latents=noise,
        max_sequence_length=16,
        output_type="latent",
        callback_on_step_end=grab,
    )
    pe, _, pp, _ = sd3_pipe.encode_prompt(
        PROMPTS[:2], PROMPTS[:2], PROMPTS[:2], do_classifier_free_guidance=False, max_sequence_length=16
    )
    sched = type(sd3_pipe.scheduler).from_config(sd3_pipe.scheduler.config)
    sched.set_timesteps(n)
    x = captured["x"]
    for t in sched.timesteps[n - k :]:
        v = sd3_pipe.transformer(
            hidden_states=x, timestep=t.expand(2), encoder_hidden_states=pe, pooled_projections=pp, return_dict=False
        )[0]
        x = sched.step(v, t, x, return_dict=False)[0]
    vae = sd3_pipe.vae
    img = vae.decode(x / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]
    img = sd3_pipe.image_processor.postprocess(img, output_type="pt")
    (-mean_reward(img, None).mean()).backward()
    for a, p in zip(ours, params, strict=True):
        assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-8)


def test_refl_one_late_step_with_x0(flux_pipe):
    model, _, cond, noise = _setup(flux_pipe)
    cfg = DraftConfig(num_steps=8, k=1, variant="refl", refl_range=(0.5, 1.0))
    seen = set()
    for seed in range(12):
        rec = CallRecorder(model.transformer)
        out = sample(model, noise, cond, cfg, rng=random.Random(seed))
        rec.handle.remove()
        (s,) = out.grad_steps
        assert 4 <= s <= 7
        seen.add(s)
        assert [g for _, g in rec.calls] == [False] * s + [True]  # stops right after the gradient step
        assert out.images.requires_grad
    assert len(seen) > 1  # the step is random


def test_refl_x0_is_x_minus_sigma_v(sd3_pipe):
    """At the last step the x0 prediction equals the Euler step to σ=0, so ReFL at s=N−1 equals DRaFT-1."""
    model, _, cond, noise = _setup(sd3_pipe)
    a = sample(model, noise, cond, DraftConfig(num_steps=4, k=1, variant="refl", refl_range=(0.99, 1.0)))
    b = sample(model, noise, cond, DraftConfig(num_steps=4, k=1))
    assert a.grad_steps == b.grad_steps == [3]
    assert torch.allclose(a.images, b.images, atol=1e-6)


def test_draft_lv_copies(flux_pipe):
    model, params, cond, noise = _setup(flux_pipe)
    rec = CallRecorder(model.transformer)
    cfg = DraftConfig(num_steps=4, k=1, variant="draft_lv", lv_copies=3)
    res = draft_step(model, mean_reward, PROMPTS[:2], cond, noise, cfg, generator=torch.Generator().manual_seed(0))
    assert res.rewards.shape == (6,) and res.images.shape[0] == 6
    assert rec.calls == [(2, False)] * 4 + [(6, True)]
    res.loss.backward()
    assert all(p.grad is not None for p in params)


def test_kl_regulariser_against_base(sd3_pipe):
    model, params, cond, noise = _setup(sd3_pipe, perturb=False)
    cfg = DraftConfig(num_steps=4, k=2, kl_weight=1.0)
    out = sample(model, noise, cond, cfg)
    assert out.kl is not None and out.kl.item() == 0.0  # lora_B = 0: LoRA model equals the base model
    for n, p in model.transformer.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)
    out = sample(model, noise, cond, cfg)
    assert out.kl.item() > 0
    out.kl.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    # the adapters are back on after the base pass
    assert not model.transformer._hf_peft_config_loaded or all(
        not m.disable_adapters for m in model.transformer.modules() if hasattr(m, "lora_A")
    )


def test_reward_hinge():
    r = torch.tensor([0.2, 0.9], requires_grad=True)
    reward_loss(r, hinge=0.5).backward()
    assert r.grad.tolist() == [-0.5, 0.0]  # no push beyond the hinge
    r2 = torch.tensor([0.2, 0.9], requires_grad=True)
    reward_loss(r2).backward()
    assert r2.grad.tolist() == [-0.5, -0.5]


def test_config_validation():
    with pytest.raises(ValueError, match="variant"):
        DraftConfig(variant="nope")
    with pytest.raises(ValueError, match="k must be"):
        DraftConfig(num_steps=4, k=5)


def test_gradient_checkpointing_gives_the_same_gradients(flux_pipe):
    model, params, cond, noise = _setup(flux_pipe)
    cfg = DraftConfig(num_steps=4, k=2)
    grads = []
    for ckpt in (False, True):
        if ckpt:
            model.transformer.enable_gradient_checkpointing()
            model.vae.enable_gradient_checkpointing()
        draft_step(model, mean_reward, PROMPTS[:2], cond, noise, cfg).loss.backward()
        grads.append([p.grad.clone() for p in params])
        for p in params:
            p.grad = None
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
