"""The stateless DRaFT sampling loop reproduces the diffusers SD3 / FLUX pipelines.

Tolerance: max |Δ| ≤ 1e-5 on images in 0..1 (fp32, CPU). Both sides run the same modules, so anything beyond
float reordering (σ schedule, shift/μ, timestep scaling, packing, VAE scaling/shift, guidance) would show.
"""

from __future__ import annotations

import pytest
import torch
from draft_common import PROMPTS

from icthp_core.diffusion.draft import (
    FlowModel,
    encode_prompts,
    generate,
    latent_image_ids,
    pack_latents,
    unpack_latents,
)

pytestmark = [pytest.mark.slow]

TOL = 1e-5


def _pipeline_images(pipe, prompts, noise, steps, h, w, guidance):
    from icthp_core.diffusion.lora import detect_arch

    lat = pack_latents(noise) if detect_arch(pipe.transformer) == "flux" else noise
    return pipe(
        prompts,
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=h,
        width=w,
        output_type="pt",
        max_sequence_length=16,
        latents=lat,
    ).images


@pytest.mark.parametrize(("h", "w", "steps"), [(32, 32, 4), (64, 32, 8)])
def test_loop_matches_pipeline(pipe, h, w, steps):
    model = FlowModel.from_pipeline(pipe)
    cond = encode_prompts(pipe, PROMPTS[:2], max_sequence_length=16)
    noise = model.noise(2, h, w, torch.Generator().manual_seed(0))
    ours = generate(model, noise, cond, steps)
    ref = _pipeline_images(pipe, PROMPTS[:2], noise, steps, h, w, 0.0)
    assert ours.shape == ref.shape == (2, 3, h, w)
    assert ours.std() > 0.01  # not a degenerate image
    assert (ours - ref).abs().max().item() <= TOL


def test_sd3_cfg_matches_pipeline(sd3_pipe):
    model = FlowModel.from_pipeline(sd3_pipe, guidance_scale=3.0)
    cond = encode_prompts(sd3_pipe, PROMPTS[:2], max_sequence_length=16, negative=True)
    noise = model.noise(2, 32, 32, torch.Generator().manual_seed(1))
    ours = generate(model, noise, cond, 4)
    ref = _pipeline_images(sd3_pipe, PROMPTS[:2], noise, 4, 32, 32, 3.0)
    assert (ours - ref).abs().max().item() <= TOL
    assert (ours - generate(FlowModel.from_pipeline(sd3_pipe), noise, cond, 4)).abs().max() > 1e-4


def test_sd3_dynamic_shift_matches_pipeline(sd3_pipe):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sd3_pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    model = FlowModel.from_pipeline(sd3_pipe)
    cond = encode_prompts(sd3_pipe, PROMPTS[:1], max_sequence_length=16)
    noise = model.noise(1, 64, 64, torch.Generator().manual_seed(2))
    ref = _pipeline_images(sd3_pipe, PROMPTS[:1], noise, 6, 64, 64, 0.0)
    assert (generate(model, noise, cond, 6) - ref).abs().max().item() <= TOL


def test_flux_dev_guidance_matches_pipeline():
    from icthp_core.testing.diffusion import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(seed=3, guidance_embeds=True)
    pipe.set_progress_bar_config(disable=True)
    model = FlowModel.from_pipeline(pipe, guidance_scale=3.5)
    cond = encode_prompts(pipe, PROMPTS[:2], max_sequence_length=16)
    noise = model.noise(2, 32, 32, torch.Generator().manual_seed(3))
    ref = _pipeline_images(pipe, PROMPTS[:2], noise, 4, 32, 32, 3.5)
    assert (generate(model, noise, cond, 4) - ref).abs().max().item() <= TOL


def test_flux_packing_matches_diffusers():
    from diffusers import FluxPipeline

    x = torch.randn(2, 4, 6, 8)
    ref = FluxPipeline._pack_latents(x, 2, 4, 6, 8)
    assert torch.equal(pack_latents(x), ref)
    assert torch.equal(unpack_latents(ref, 6, 8), x)
    assert torch.equal(latent_image_ids(6, 8), FluxPipeline._prepare_latent_image_ids(1, 3, 4, "cpu", torch.float32))


def test_schedule_matches_scheduler_for_real_configs():
    """σ for the published SD3.5 (static shift 3) and FLUX.1 (dynamic μ) scheduler configs at 1024²."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sd3 = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
    flux = {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    }
    m = FlowModel.__new__(FlowModel)
    m.scheduler_config, m.arch = sd3, "sd3"
    sig, ts = m.schedule(8, 128, 128)
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(8)
    assert torch.allclose(sig, ref.sigmas) and torch.allclose(ts, ref.timesteps)
    assert sig[0] == 1.0 and sig[-1] == 0.0
    m.scheduler_config, m.arch = flux, "flux"
    sig, _ = m.schedule(4, 128, 128)
    mu = calculate_shift(4096, 256, 4096, 0.5, 1.15)
    t = torch.linspace(1, 0.25, 4, dtype=torch.float64)
    expect = torch.exp(torch.tensor(mu)) / (torch.exp(torch.tensor(mu)) + (1 / t - 1))  # exponential time shift
    assert torch.allclose(sig[:-1].double(), expect, atol=1e-6)
