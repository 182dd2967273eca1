"""The DRaFT low-memory options: 8-bit AdamW (bitsandbytes), VAE tiling and slicing (tiny models, CPU)."""

from __future__ import annotations

import random
import sys

import pytest
import torch
from draft_common import tiny_config
from safetensors.torch import load_file

from icthp_core.diffusion.draft import DraftConfig, FlowModel, draft_step, encode_prompts
from icthp_core.diffusion.lora import add_lora
from icthp_core.errors import ConfigError
from icthp_core.training import optim

pytestmark = [pytest.mark.slow]

PROMPTS2 = ["a photo of a cat", "a red car"]


def test_make_optimizer_names_and_missing_bitsandbytes(monkeypatch):
    p = [torch.nn.Parameter(torch.zeros(3))]
    assert type(optim.make_optimizer("adamw", p, lr=1e-3)) is torch.optim.AdamW
    with pytest.raises(ConfigError, match="optimizer='sgd'"):
        optim.make_optimizer("sgd", p, lr=1e-3)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"optimizer=adamw8bit needs bitsandbytes: pip install 'icthp\[lowmem\]'"):
        optim.make_optimizer("adamw8bit", p, lr=1e-3)


def test_optimizer_option_is_checked_in_every_training_config():
    from icthp_cli.draft import parse_config
    from icthp_core.training.config import load_config
    from icthp_core.training.hp import HPConfig

    cfg = parse_config(["prompts=p.txt", "optimizer=adamw8bit", "vae_tiling=true", "vae_slicing=true"])
    assert (cfg.optimizer, cfg.vae_tiling, cfg.vae_slicing, cfg.vae_tile_size) == ("adamw8bit", True, True, 512)
    with pytest.raises(ConfigError, match="optimizer='adam': expected one of adamw, adamw8bit"):
        parse_config(["prompts=p.txt", "optimizer=adam"])
    assert load_config(HPConfig, values={"optimizer": "adamw8bit"}).optimizer == "adamw8bit"
    with pytest.raises(ConfigError, match="optimizer"):
        load_config(HPConfig, values={"optimizer": "lion"})


def test_8bit_adamw_resume_equals_uninterrupted_run(
    tiny_pipeline_dirs, prompt_file, tiny_rewards, tmp_path, monkeypatch
):
    pytest.importorskip("bitsandbytes")
    from icthp_core.diffusion.draft_train import train

    monkeypatch.setattr(optim, "MIN_8BIT_SIZE", 1)  # the tiny LoRA tensors get uint8 moments too
    kw = dict(sample_every=0, num_steps=4, k=2, optimizer="adamw8bit")
    pipe = tiny_pipeline_dirs["sd3"]
    full = train(tiny_config(pipe, prompt_file, tiny_rewards, tmp_path / "a", max_steps=4, **kw))
    part = tmp_path / "b"
    train(tiny_config(pipe, prompt_file, tiny_rewards, part, max_steps=2, **kw))
    state = torch.load(part / "checkpoints" / "step_2" / "optimizer.pt", weights_only=True)
    dtypes = {t.dtype for s in state["state"].values() for t in s["__bnb_optimizer_quant_state__"].values()}
    assert torch.uint8 in dtypes  # the 8-bit moments were checkpointed (and load with weights_only=True)
    resumed = train(tiny_config(pipe, prompt_file, tiny_rewards, part, max_steps=4, **kw))
    a, b = load_file(full), load_file(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    plain = load_file(
        train(tiny_config(pipe, prompt_file, tiny_rewards, tmp_path / "c", max_steps=4, **{**kw, "optimizer": "adamw"}))
    )
    assert any(not torch.allclose(a[k], plain[k], rtol=1e-5, atol=1e-7) for k in a)  # 8-bit moments differ


def _lora_grads(model, params, cond, **vae_options):
    """LoRA gradients of one DRaFT step (K=1 through the VAE decode) with the given VAE options."""
    model.set_vae_memory(**vae_options)
    for p in params:
        p.grad = None
    noise = model.noise(2, 32, 32, torch.Generator().manual_seed(0))
    res = draft_step(
        model,
        lambda im, pr: im.mean(dim=(1, 2, 3)),
        PROMPTS2,
        cond,
        noise,
        DraftConfig(num_steps=2, k=1, height=32, width=32),
        rng=random.Random(0),
    )
    res.loss.backward()
    return torch.cat([p.grad.flatten() for p in params])


def test_vae_tiling_and_slicing_decode_and_gradients(pipe, monkeypatch):
    """Tiling (16-px tiles on 32-px images, so diffusers really tiles) keeps images close to the untiled decode and
    passes the gradient to the LoRA; slicing gives the same images and gradients."""
    from diffusers import AutoencoderKL

    calls = []
    real = AutoencoderKL.tiled_decode
    monkeypatch.setattr(AutoencoderKL, "tiled_decode", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    cond = encode_prompts(pipe, PROMPTS2, max_sequence_length=16)
    model = FlowModel.from_pipeline(pipe)
    params = add_lora(model.transformer, 4)
    torch.manual_seed(1)
    for p in params:
        p.data.normal_(0, 0.05)
    model.vae.enable_gradient_checkpointing()
    z = torch.randn(2, model.vae.config.latent_channels, 32 // model.vae_scale_factor, 32 // model.vae_scale_factor)
    ref = model.decode(z)
    g_ref = _lora_grads(model, params, cond)
    assert not calls

    model.set_vae_memory(tiling=True, tile_size=16)
    tiled = model.decode(z)
    assert calls  # the tiled path was taken
    # random tiny VAE: observed max |Δ| 0.22 / 0.15, mean |Δ| 0.029 / 0.015 (SD3 / FLUX fixture), images in 0..1
    assert (tiled - ref).abs().mean() < 0.05 and (tiled - ref).abs().max() < 0.35
    n = len(calls)
    g_tiled = _lora_grads(model, params, cond, tiling=True, tile_size=16)
    assert len(calls) > n and g_tiled.abs().sum() > 0
    assert torch.nn.functional.cosine_similarity(g_ref, g_tiled, dim=0) > 0.98  # observed 0.997 / 0.996

    model.set_vae_memory(slicing=True)
    torch.testing.assert_close(model.decode(z), ref, rtol=0, atol=1e-6)  # observed max |Δ| 5e-7
    torch.testing.assert_close(_lora_grads(model, params, cond, slicing=True), g_ref, rtol=1e-5, atol=1e-8)


def test_trainer_applies_vae_options(tiny_pipeline_dirs, prompt_file, tiny_rewards, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    from icthp_core.diffusion.draft_train import train

    seen = []
    real = AutoencoderKL.tiled_decode
    monkeypatch.setattr(
        AutoencoderKL,
        "tiled_decode",
        lambda self, z, *a, **k: (
            seen.append((torch.is_grad_enabled(), self.use_slicing, z.shape[0])) or real(self, z, *a, **k)
        ),
    )
    cfg = tiny_config(
        tiny_pipeline_dirs["flux"],
        prompt_file,
        tiny_rewards,
        tmp_path,
        max_steps=1,
        sample_every=1,
        vae_tiling=True,
        vae_slicing=True,
        vae_tile_size=16,
    )
    train(cfg)
    # the training decode (with gradients) and the sample grids (without), one image per decode (slicing)
    assert {g for g, _, _ in seen} == {True, False}
    assert all(s and b == 1 for _, s, b in seen)


def test_trainer_with_every_memory_option_together(
    tiny_pipeline_dirs, prompt_file, tiny_rewards, tmp_path, monkeypatch
):
    """The 24 GB recipe's options at once (offload_frozen + 8-bit AdamW + VAE tiling and slicing): the tiled decode
    runs in the reward phase with gradients and in the sample grids, the LoRA trains, the 8-bit state is saved."""
    from diffusers import AutoencoderKL

    from icthp_core.diffusion.draft_train import train

    monkeypatch.setattr(optim, "MIN_8BIT_SIZE", 1)  # the tiny LoRA tensors get uint8 moments too
    seen = []
    real = AutoencoderKL.tiled_decode
    monkeypatch.setattr(
        AutoencoderKL,
        "tiled_decode",
        lambda self, z, *a, **k: seen.append(torch.is_grad_enabled()) or real(self, z, *a, **k),
    )
    kw = dict(max_steps=2, sample_every=2, checkpoint_every=2, vae_tiling=True, vae_slicing=True, vae_tile_size=16)
    cfg = tiny_config(
        tiny_pipeline_dirs["sd3"], prompt_file, tiny_rewards, tmp_path, offload_frozen=True, optimizer="adamw8bit", **kw
    )
    lora = load_file(train(cfg))
    assert set(seen) == {True, False}
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at zero: it trained
    state = torch.load(tmp_path / "checkpoints" / "step_2" / "optimizer.pt", weights_only=True)["state"]
    assert torch.uint8 in {t.dtype for st in state.values() for t in st["__bnb_optimizer_quant_state__"].values()}


@pytest.mark.parametrize("size", ["0", "100"])
def test_bad_vae_tile_size_is_a_one_line_config_error(size, prompt_file, capsys):
    from icthp_cli.main import main

    rc = main(["draft", f"prompts={prompt_file}", f"vae_tile_size={size}"])
    err = capsys.readouterr().err
    assert rc != 0 and f"vae_tile_size={size}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
