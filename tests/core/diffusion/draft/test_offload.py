"""offload_frozen: the phase swap moves storage and restores it, the three-phase backward gives the single backward's
LoRA gradients, and the trainer trains, samples and resumes with it (CPU; the swap targets a second storage)."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import torch
from draft_common import PROMPTS, tiny_config
from safetensors.torch import load_file
from torch import nn

from icthp_core.diffusion.draft import DraftConfig, FlowModel, draft_step, encode_prompts
from icthp_core.diffusion.lora import add_lora
from icthp_core.diffusion.offload import FrozenSwap, draft_step_offloaded, draft_swap, frozen_tensors

pytestmark = [pytest.mark.slow]


def _lora_module(seed=0):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    m.register_buffer("scale", torch.tensor([2.0]))
    m.requires_grad_(False)
    m.lora = nn.Parameter(torch.randn(2, 2))  # trainable: must never move
    return m


def test_swap_moves_frozen_storage_and_restores_values():
    """Device "cpu" still gets its own copies (distinct storage), so residency is visible in data_ptr; a CUDA
    device uses the same code (set_data between CPU and CUDA tensors, as `nn.Module.to`)."""
    device = "cpu"
    a, b = _lora_module(0), _lora_module(1)
    orig = {id(t): t.detach().clone() for m in (a, b) for t in frozen_tensors([m])}
    lora_ptr, lora_val = a.lora.data_ptr(), a.lora.detach().clone()
    swap = FrozenSwap({"a": [a], "b": [b]}, device, resident="a")
    assert len(frozen_tensors([a])) == 7 and all(t is not a.lora for t in frozen_tensors([a]))  # 3×(w, b), buffer

    def state(name):  # {(device type, whether the tensor is its host copy)} over the group
        return {
            (t.device.type, t.data_ptr() == h.data_ptr())
            for t, h in zip(swap.tensors[name], swap.host[name], strict=True)
        }

    assert state("a") == {(device, False)}  # resident: a device copy, not the host copy
    assert state("b") == {("cpu", True)}
    swap.activate("b")
    assert state("a") == {("cpu", True)} and state("b") == {(device, False)}
    with swap.phase("a"):
        assert state("a") == {(device, False)} and state("b") == {("cpu", True)}
    assert swap.active == "b" and state("b") == {(device, False)}
    swap.activate(None)
    for m in (a, b):
        for t in frozen_tensors([m]):
            assert t.device.type == "cpu" and torch.equal(t, orig[id(t)])  # values back from the host copies
    assert a.lora.data_ptr() == lora_ptr and torch.equal(a.lora, lora_val) and a.lora.requires_grad
    assert swap.bytes("a") == sum(t.numel() * t.element_size() for t in frozen_tensors([a]))
    assert not any(h.is_pinned() for hs in swap.host.values() for h in hs)  # pinned only for a CUDA device
    with pytest.raises(KeyError, match="unknown group"):
        swap.activate("c")


def _tower_reward(record: dict, swap_ref: list):
    """A differentiable 'reward' through a frozen conv tower (swapped with the VAE); records where the transformer
    and the tower were while it ran."""
    torch.manual_seed(3)
    tower = nn.Conv2d(3, 4, 3).requires_grad_(False)

    def fn(images, prompts):
        if swap_ref:
            sw = swap_ref[0]
            host = {h.data_ptr() for h in sw.host["transformer"]}
            record["transformer_on_host"] = all(t.data_ptr() in host for t in sw.tensors["transformer"])
            dhost = {h.data_ptr() for h in sw.host["decode"]}
            record["tower_on_host"] = any(t.data_ptr() in dhost for t in frozen_tensors([tower]))
        return tower(images * 2 - 1).pow(2).mean(dim=(1, 2, 3))

    fn.scorer = SimpleNamespace(models={"tower": tower})
    return fn


@pytest.mark.parametrize(
    "dcfg",
    [
        DraftConfig(num_steps=4, k=2, kl_weight=0.5),
        DraftConfig(num_steps=4, k=1, variant="refl", reward_hinge=2.0),
        DraftConfig(num_steps=4, k=1, variant="draft_lv", lv_copies=2, kl_weight=0.1),
    ],
    ids=["draft", "refl", "draft_lv"],
)
def test_three_phase_backward_equals_single_backward(pipe, dcfg):
    model = FlowModel.from_pipeline(pipe)
    params = add_lora(model.transformer, 4)
    g = torch.Generator().manual_seed(5)
    for n, p in model.transformer.named_parameters():
        if "lora_B" in n:
            p.data = 0.05 * torch.randn(p.shape, generator=g)
    model.transformer.enable_gradient_checkpointing()
    model.vae.enable_gradient_checkpointing()
    cond = encode_prompts(pipe, PROMPTS[:2], max_sequence_length=16)
    noise = model.noise(2, 32, 32, torch.Generator().manual_seed(0))
    record, swap_ref = {}, []
    reward = _tower_reward(record, swap_ref)

    ref = draft_step(model, reward, PROMPTS[:2], cond, noise, dcfg, random.Random(1), torch.Generator().manual_seed(2))
    ref.loss.backward()
    want = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None

    swap = draft_swap(model, reward, "cpu")
    swap_ref.append(swap)
    ptrs = [p.data_ptr() for p in params]
    res = draft_step_offloaded(
        model, reward, PROMPTS[:2], cond, noise, dcfg, swap, rng=random.Random(1),
        generator=torch.Generator().manual_seed(2), grad_scale=1024.0,
    )  # fmt: skip
    assert record == {"transformer_on_host": True, "tower_on_host": False}  # phase 2: only VAE + tower resident
    assert swap.active == "transformer"
    assert res.loss.grad_fn is None and res.loss.item() == pytest.approx(ref.loss.item(), rel=1e-6)
    torch.testing.assert_close(res.rewards, ref.rewards, rtol=1e-6, atol=1e-7)
    assert res.grad_steps == ref.grad_steps
    assert [p.data_ptr() for p in params] == ptrs
    for p, w in zip(params, want, strict=True):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-6)
    assert sum(float(w.abs().sum()) for w in want) > 0


def test_trainer_offload_matches_plain_run_and_resumes(tiny_pipeline_dirs, prompt_file, tiny_rewards, tmp_path):
    from icthp_core.diffusion.draft_train import train

    kw = dict(num_steps=4, k=2, sample_every=2, max_steps=4)
    plain = train(tiny_config(tiny_pipeline_dirs["sd3"], prompt_file, tiny_rewards, tmp_path / "a", **kw))
    part = tmp_path / "b"
    kw_off = dict(kw, offload_frozen=True, checkpoint_every=2)
    train(tiny_config(tiny_pipeline_dirs["sd3"], prompt_file, tiny_rewards, part, **dict(kw_off, max_steps=2)))
    resumed = train(tiny_config(tiny_pipeline_dirs["sd3"], prompt_file, tiny_rewards, part, **kw_off))
    a, b = load_file(plain), load_file(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)  # Adam on fp32 reorderings

    def rows(d):
        return [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]

    ra, rb = rows(tmp_path / "a"), rows(part)
    assert [r["step"] for r in rb] == [r["step"] for r in ra]  # step-0 grid, train rows, grids (after resume)
    for x, y in zip(ra, rb, strict=True):  # the logged loss is the true loss, the grids' reward and monitors agree
        assert x.keys() == y.keys()
        for k in set(x) - {"train/sec"}:
            assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-6), k
    assert (part / "samples" / "step_000004.png").is_file()
    assert json.loads((part / "config.json").read_text())["offload_frozen"] is True


def test_offload_without_checkpointing_is_a_one_line_config_error(prompt_file, capsys):
    from icthp_cli.main import main

    rc = main(["draft", f"prompts={prompt_file}", "offload_frozen=true", "gradient_checkpointing=false"])
    err = capsys.readouterr().err
    assert rc != 0 and "offload_frozen" in err and "gradient_checkpointing" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
