"""ICTHPEarlyBestOfN on tiny real ComfyUI models (SD3 MMDiT and FLUX, random TAESD VAE, tiny ICT/HP rewards).

Measured here: the candidate-steps saved for n=8, k=2 at 60 % of the steps (counted at the model call), and that,
with a deterministic sampler (euler), the kept seeds' final latents equal a plain full KSampler run of each seed
(atol 1e-4 on latents; batch 8 vs batch 1 changes only float summation order)."""

import pytest
import torch

pytestmark = [pytest.mark.comfyui]

STEPS = 10
FLUX_STEPS = 6  # the FLUX checks compare samplers with a plain run: any split of a few steps shows them
PROMPT = "a red apple on a table"


@pytest.fixture(scope="module")
def reward(icthp_folder):
    from comfy_nodes.reward_nodes import ICTHPLoader

    return ICTHPLoader.execute(model="ICT-HP", ict_source="ict", hp_source="hp").result[0]


@pytest.fixture(scope="module")
def vae(comfy_root):
    import comfy.sd
    import comfy.taesd.taesd

    g = torch.Generator().manual_seed(0)  # ComfyUI's ops skip weight init: fill every tensor
    sd = {
        k: torch.randn(v.shape, generator=g) * 0.1
        for k, v in comfy.taesd.taesd.TAESD(latent_channels=16).state_dict().items()
    }
    sd["vae_scale"], sd["vae_shift"] = torch.tensor(1.0), torch.tensor(0.0)
    return comfy.sd.VAE(sd=sd)


def _cond(dim: int, pooled: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 5, dim, generator=g), {"pooled_output": torch.randn(1, pooled, generator=g)}]]


def _counting(model):
    """A clone of the ModelPatcher counting the candidate rows every model call evaluates."""
    calls = {"rows": 0}
    m = model.clone()

    def wrapper(apply_model, args):
        calls["rows"] += args["input"].shape[0]
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return m, calls


def _run(model, vae, reward, sampler="euler", cfg=1.0, n=8, k=2, fraction=0.6, seed=100, steps=STEPS):
    from comfy_nodes.early_nodes import early_best_of_n

    return early_best_of_n(
        model,
        _cond(32, 64, 1),
        _cond(32, 64, 2),
        {"samples": torch.zeros(1, 16, 8, 8)},
        vae,
        reward,
        PROMPT,
        seed=seed,
        n=n,
        k=k,
        steps=steps,
        fraction=fraction,
        cfg=cfg,
        sampler_name=sampler,
        scheduler="simple",
    )


def _plain(model, seed, sampler="euler", cfg=1.0, steps=STEPS):
    """What ComfyUI's KSampler node computes for one seed (batch of one)."""
    import comfy.sample

    latent = comfy.sample.fix_empty_latent_channels(model, torch.zeros(1, 16, 8, 8))
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(
        model, noise, steps, cfg, sampler, "simple", _cond(32, 64, 1), _cond(32, 64, 2), latent, seed=seed
    )


def test_sd3_steps_saved_and_equal_to_full_runs(make_sd3_model, vae, reward, capsys):
    model, calls = _counting(make_sd3_model(seed=3))
    res = _run(model, vae, reward)
    run = calls["rows"]
    # measured at the model: 8 candidates x 6 steps + 2 x 4 steps
    assert res.stop_step == 6 and run == res.model_steps == 8 * 6 + 2 * 4
    saved = 1 - run / (8 * STEPS)
    assert saved == pytest.approx(0.30)
    # the kept candidates are the best x0 previews, and their images equal plain runs of their seeds
    assert res.kept == sorted(range(8), key=lambda i: -res.preview_scores[i])[:2]
    assert res.images.shape == (2, 64, 64, 3) and res.previews.shape == (8, 64, 64, 3)
    worst = 0.0
    for row, seed in enumerate(res.seeds):
        plain = _plain(model, seed)
        worst = max(worst, float((res.latent["samples"][row] - plain[0]).abs().max()))
        torch.testing.assert_close(res.latent["samples"][row : row + 1], plain, atol=1e-4, rtol=0)
        torch.testing.assert_close(res.images[row : row + 1], vae.decode(plain)[..., :3], atol=1e-3, rtol=0)
    with capsys.disabled():
        print(f"\nearly best-of-8 (k=2, 60% of {STEPS} steps, SD3 tiny, euler): {run} of {8 * STEPS} ")
        print(f"candidate-steps run ({saved:.0%} saved); max |latent - plain run| = {worst:.2e}")


def test_flux_cfg_and_ancestral(make_flux_model, vae, reward):
    model = make_flux_model(seed=4)
    # deterministic sampler with cfg > 1 (negative prompt evaluated too): still equal to plain runs
    res = _run(model, vae, reward, sampler="heun", cfg=2.0, n=4, k=1, fraction=0.5, steps=FLUX_STEPS)
    plain = _plain(model, res.seeds[0], "heun", 2.0, FLUX_STEPS)
    torch.testing.assert_close(res.latent["samples"], plain, atol=1e-4, rtol=0)
    # multistep samplers (dpmpp_2m, lms, ipndm, deis, ...) restart their history at the split: close, not equal
    res = _run(model, vae, reward, sampler="dpmpp_2m", n=3, k=1, fraction=0.5, steps=FLUX_STEPS)
    diff = float((res.latent["samples"] - _plain(model, res.seeds[0], "dpmpp_2m", steps=FLUX_STEPS)).abs().max())
    assert 1e-4 < diff < 0.1 * float(res.latent["samples"].abs().max())
    # ancestral: phase 2 restarts the sampler's noise generator, so kept images are valid samples of their
    # seeds but not the plain run's images
    res = _run(model, vae, reward, sampler="euler_ancestral", n=3, k=1, fraction=0.5, steps=FLUX_STEPS)
    diff = (res.latent["samples"] - _plain(model, res.seeds[0], "euler_ancestral", steps=FLUX_STEPS)).abs().max()
    assert torch.isfinite(res.latent["samples"]).all() and float(diff) > 1e-3


def test_node_execute_outputs(make_sd3_model, vae, reward):
    from comfy_nodes.early_nodes import ICTHPEarlyBestOfN

    model = make_sd3_model(seed=3)
    kw = dict(
        model=model,
        positive=_cond(32, 64, 1),
        negative=_cond(32, 64, 2),
        vae=vae,
        reward_model=reward,
        prompt=PROMPT,
        seed=5,
        n=3,
        k=2,
        steps=4,
        fraction=0.5,
        cfg=1.0,
        sampler_name="euler",
        scheduler="simple",
    )
    out = ICTHPEarlyBestOfN.execute(
        **kw, latent_image={"samples": torch.zeros(1, 16, 8, 8), "noise_mask": torch.ones(1, 1, 64, 64)}
    )
    images, latent, scores, seeds, previews, pruned, text = out.result
    assert images.shape[0] == 2 and latent["samples"].shape[0] == 2 and len(scores) == 2 and len(seeds) == 2
    assert previews.shape[0] == 3 and pruned.shape[0] == 1 and set(seeds) <= {5, 6, 7}
    assert latent["noise_mask"].shape[0] == 1  # a shared mask stays shared
    assert "kept 2" in text and "10 of 12 candidate-steps" in text
    with pytest.raises(ValueError, match="LATENT has batch 2"):
        ICTHPEarlyBestOfN.execute(**kw, latent_image={"samples": torch.zeros(2, 16, 8, 8)})
