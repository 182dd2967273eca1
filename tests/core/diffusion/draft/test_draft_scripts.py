"""Smoke runs of the benchmark and example scripts (tiny models, CPU), and the example training configs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from tests.paths import REPO

pytestmark = [pytest.mark.slow]


def _load(rel: str):
    spec = importlib.util.spec_from_file_location(Path(rel).stem, REPO / rel)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_tiny_smoke(tmp_path):
    bench = _load("bench/bench_draft.py")
    rows = bench.main(
        [
            "--tiny",
            "--sizes",
            "32",
            "--ks",
            "1,3",
            "--batches",
            "2",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    assert [(r["arch"], r["k"], r["batch"]) for r in rows] == [
        ("sd3", 1, 2),
        ("sd3", 3, 2),
        ("flux", 1, 2),
        ("flux", 3, 2),
    ]
    assert all(r["sec_per_iter"] > 0 and math.isnan(r["peak_gib"]) for r in rows)
    assert (tmp_path / "b.json").is_file()


def test_bench_tiny_offload_frozen(tmp_path):
    bench = _load("bench/bench_draft.py")
    argv = ["--tiny", "--arch", "flux", "--sizes", "32", "--ks", "1", "--batches", "1", "--iters", "1", "--warmup", "0"]
    rows = bench.main([*argv, "--offload-frozen"])
    assert len(rows) == 1 and rows[0]["offload_frozen"] and rows[0]["sec_per_iter"] > 0
    est = rows[0]["estimate"]
    assert rows[0]["est_gib"] == max(est["phase_sampling"], est["phase_reward"], est["phase_backward"])
    with pytest.raises(SystemExit):
        bench.main([*argv, "--offload-frozen", "--no-checkpointing"])


def test_bench_estimate_only_at_published_size():
    """--estimate-only builds the real-size models on the meta device (nothing allocated) and prints both peaks;
    offloading drops the transformer's 16 GB from the reward phase and the towers from the other phases."""
    bench = _load("bench/bench_draft.py")
    (row,) = bench.main(["--estimate-only", "--arch", "sd3", "--sizes", "1024", "--ks", "3", "--batches", "1"])
    est, off = row["estimate"], row["estimate_offload"]
    assert row["est_gib"] == est["total"] and row["est_offload_gib"] == off["total"]
    assert off["phase_reward"] < off["phase_sampling"] < est["total"]
    assert est["total"] - off["total"] == pytest.approx(est["vae_decode"] + est["reward"] + 3.2, abs=0.2)


def test_bench_tiny_lowmem_options(tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    bench = _load("bench/bench_draft.py")
    args = ["--tiny", "--arch", "sd3", "--sizes", "32", "--ks", "1", "--batches", "2", "--iters", "1", "--warmup", "0"]
    assert bench.main(args)[0]["optimizer"] == "adamw"
    rows = bench.main(
        [*args, "--optimizer", "adamw8bit", "--vae-tiling", "--vae-slicing", "--json", str(tmp_path / "b.json")]
    )
    r = rows[0]
    assert (r["optimizer"], r["vae_tiling"], r["vae_slicing"]) == ("adamw8bit", 16, True) and r["sec_per_iter"] > 0
    assert json.loads((tmp_path / "b.json").read_text())["rows"][0]["optimizer"] == "adamw8bit"
    assert "| tiny | 32² | 8 | 1 | 2 | adamw8bit | 16 px | on |" in capsys.readouterr().out


def test_bench_real_configs_match_published_sizes():
    """The random-weight models of the benchmark have the published parameter counts (meta device, no memory)."""
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    bench = _load("bench/bench_draft.py")
    with torch.device("meta"):
        sd3 = sum(p.numel() for p in SD3Transformer2DModel(**bench.SD35_LARGE).parameters())
        flux = sum(p.numel() for p in FluxTransformer2DModel(**bench.FLUX1).parameters())
    assert 8.0e9 < sd3 < 8.2e9  # SD3.5-Large: 8.1B
    assert 11.8e9 < flux < 12.0e9  # FLUX.1: 11.9B


def test_sd21_example_tiny(tmp_path):
    ex = _load("examples/diffusers/sd21_ict_text_encoder.py")
    ex.main(["--tiny", "--out", str(tmp_path / "x.png")])
    assert (tmp_path / "x.png").stat().st_size > 0


@pytest.mark.parametrize("name", ["draft_sd35_large_turbo_icthp.yaml", "draft_flux_schnell_hp.yaml"])
def test_example_configs_parse(name):
    from icthp_cli.draft import parse_config

    cfg = parse_config(["--config", str(REPO / "examples" / "diffusers" / name)])
    assert cfg.lr == 5e-6 and cfg.guidance_scale == 0.0
    assert (cfg.num_steps, cfg.k) in ((8, 3), (4, 1))


@pytest.mark.parametrize(
    ("arch", "dtype_name"), [("sd3", "float32"), ("flux", "float32"), ("sd3", "bfloat16"), ("flux", "bfloat16")]
)
def test_bench_real_path_with_small_configs(arch, dtype_name):
    """The GPU code path of the benchmark (meta-free random init, real-size reward construction) on small configs."""
    import torch

    from icthp_core.diffusion.lora import add_lora
    from icthp_core.testing.tiny import tiny_clip_config

    bench = _load("bench/bench_draft.py")
    dtype = getattr(torch, dtype_name)
    tcfg = (
        dict(
            bench.SD35_LARGE,
            num_layers=1,
            num_attention_heads=2,
            caption_projection_dim=128,
            joint_attention_dim=32,
            pooled_projection_dim=16,
            pos_embed_max_size=16,
        )
        if arch == "sd3"
        else dict(
            bench.FLUX1,
            num_layers=1,
            num_single_layers=1,
            num_attention_heads=1,
            joint_attention_dim=32,
            pooled_projection_dim=16,
        )
    )
    vcfg = dict(
        bench.VAE16,
        block_out_channels=(8, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=4,
    )
    model, cond_fn, reward = bench.build_real(arch, "cpu", dtype, tcfg, vcfg, tiny_clip_config(), text=(8, 32, 16))
    r = reward(torch.rand(2, 3, 40, 40), ["a cat", "a dog"])
    assert r.shape == (2,) and torch.isfinite(r).all() and r[0] != r[1]  # all buffers initialised
    params = add_lora(model.transformer, 2)
    opt = torch.optim.AdamW(params, lr=1e-3)
    sec, peak = bench.run_config(model, cond_fn, reward, params, opt, 32, 1, 1, 2, 1, 0, "cpu")
    assert sec > 0 and all(p.grad is None for p in params)  # stepped and zeroed
