"""Seconds per iteration and peak GPU memory of DRaFT-K LoRA training at real model sizes (random weights).

    python bench/bench_draft.py                         # SD3.5-Large and FLUX.1, 512²/1024², K=1/3, batch 1,2,4
    python bench/bench_draft.py --arch sd3 --sizes 1024 --ks 3 --batches 1 --json out.json
    python bench/bench_draft.py --tiny                  # CPU smoke run on tiny models
    python bench/bench_draft.py --arch sd3 --sizes 1024 --ks 1 --batches 1 --optimizer adamw8bit --vae-tiling
    python bench/bench_draft.py --arch sd3 --sizes 1024 --ks 3 --batches 1 --offload-frozen
    python bench/bench_draft.py --estimate-only --sizes 512,1024 --ks 1,3 --batches 1 [--optimizer adamw8bit ...]
                                                        # the estimator only (meta-device models, any machine),
                                                        # with and without offload_frozen

One iteration = sampling (N steps, gradients through the last K) + VAE decode + ICT-HP reward (two CLIP ViT-H/14
towers at real size) + backward + AdamW step on the LoRA (rank 16; `--optimizer adamw8bit`: bitsandbytes' 8-bit
AdamW). Transformer/VAE in bf16 with gradient checkpointing (disable with --no-checkpointing); `--vae-tiling`,
`--vae-slicing` and `--offload-frozen` as the trainer's options; LoRA parameters fp32, text embeddings random with
the real shapes (the encoders are freed before training in train/draft_lora.py, so they are not resident).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
import tempfile
import time
from contextlib import contextmanager
from typing import NamedTuple

import torch

from icthp_core.dtypes import DTYPE_CHOICES, parse_dtype

# Published configs (transformer/config.json, vae/config.json of the hub repos)
SD35_LARGE = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=38,
    attention_head_dim=64,
    num_attention_heads=38,
    joint_attention_dim=4096,
    caption_projection_dim=2432,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=192,
    qk_norm="rms_norm",
)
SD35_MEDIUM = dict(  # MMDiT-X: self-attention added in the first 13 blocks
    sample_size=128,
    patch_size=2,
    in_channels=16,
    num_layers=24,
    attention_head_dim=64,
    num_attention_heads=24,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    out_channels=16,
    pos_embed_max_size=384,
    qk_norm="rms_norm",
    dual_attention_layers=tuple(range(13)),
)
FLUX1 = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=False,
    axes_dims_rope=(16, 56, 56),
)
VAE16 = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=16,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    layers_per_block=2,
    norm_num_groups=32,
    use_quant_conv=False,
    use_post_quant_conv=False,
)
SCHED = {
    "sd3": {"shift": 3.0},
    "flux": {
        "shift": 1.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    },
}
TEXT = {"sd3": (333, 4096, 2048), "flux": (256, 4096, 768)}  # tokens, width, pooled width
DEFAULTS = {"sd3": (8, "SD3.5-Large"), "sd3-medium": (8, "SD3.5-Medium"), "flux": (4, "FLUX.1-schnell")}
TRANSFORMERS = {"sd3": SD35_LARGE, "sd3-medium": SD35_MEDIUM, "flux": FLUX1}


@contextmanager
def _default(device, dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def _random_state_dict(meta_model: torch.nn.Module, device) -> dict[str, torch.Tensor]:
    """Random weights (LayerNorm scales 1, biases 0, the rest N(0, 0.02²)) for every key of a meta-device model."""
    sd = {}
    for n, t in meta_model.state_dict().items():
        x = torch.empty(t.shape, device=device, dtype=torch.float32)
        if n.endswith(
            ("norm.weight", "ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")
        ):
            x.fill_(1.0)
        elif n.endswith("bias"):
            x.zero_()
        else:
            x.normal_(0, 0.02)
        sd[n] = x
    return sd


def build_real(
    arch: str,
    device,
    dtype,
    transformer_cfg: dict | None = None,
    vae_cfg: dict | None = None,
    clip_cfg: dict | None = None,
    text: tuple[int, int, int] | None = None,
):
    """(FlowModel, TextConditioning factory, reward_fn) at the published sizes (or the given configs), random
    weights (shapes only on the meta device, for --estimate-only)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel

    from icthp_core.diffusion.draft import FlowModel, TextConditioning

    with _default(device, dtype):
        tcfg = transformer_cfg or TRANSFORMERS[arch]
        arch = "sd3" if arch.startswith("sd3") else arch  # SD3.5-Medium: the SD3 VAE, scheduler and text shapes
        tr = SD3Transformer2DModel(**tcfg) if arch == "sd3" else FluxTransformer2DModel(**tcfg)
        vae = AutoencoderKL(
            **(vae_cfg or VAE16),
            scaling_factor=1.5305 if arch == "sd3" else 0.3611,
            shift_factor=0.0609 if arch == "sd3" else 0.1159,
        )
    tr.to(device).eval()  # buffers made outside the default-device context too
    vae.to(device).eval()
    model = FlowModel(
        tr, vae, {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, **SCHED[arch]}
    )
    t, d, p = text or TEXT[arch]

    def cond(b):
        ids = torch.zeros(t, 3, device=device) if arch == "flux" else None
        return TextConditioning(
            torch.randn(b, t, d, device=device, dtype=dtype) * 0.1,
            torch.randn(b, p, device=device, dtype=dtype) * 0.1,
            ids,
        )

    return model, cond, real_reward(device, dtype, clip_cfg)


def real_reward(device, dtype, clip_cfg: dict | None = None):
    """ICT-HP with two CLIP ViT-H/14 towers (ICT full CLIP, HP vision tower + head), random weights."""
    from icthp_core.checkpoints.config import VIT_H_14
    from icthp_core.checkpoints.loading import build_clip, load_into
    from icthp_core.diffusion.draft import weighted_reward
    from icthp_core.scoring.models import HPHead, HPModel, ICTModel
    from icthp_core.scoring.scorer import MultiScorer

    cfg = clip_cfg or VIT_H_14
    clip, visual = build_clip(cfg), build_clip(cfg, vision_only=True)  # meta device, as the core loads them
    if torch.device(device).type != "meta":  # meta: shapes only (--estimate-only)
        load_into(clip, _random_state_dict(clip, device), "<random ICT>")
        load_into(visual, _random_state_dict(visual, device), "<random HP backbone>")
    with torch.device(device):
        head = HPHead((cfg["projection_dim"], 1024, 128, 64, 16, 1))
    clip, visual = clip.to(device, dtype), visual.to(device, dtype)  # buffers made on the CPU (attn_mask) too
    models = {"ict": ICTModel(clip), "hp": HPModel(visual, head.to(dtype))}
    for m in models.values():
        m.eval().requires_grad_(False)
    scorer = MultiScorer(["ict_hp"], device=device, dtype=dtype, models=models)
    fn = weighted_reward({"ict_hp": lambda im, pr: scorer.reward(im, list(pr), metric="ict_hp")}, {"ict_hp": 1.0})
    fn.scorer = scorer  # type: ignore[attr-defined]
    return fn


def build_tiny(arch: str, device, dtype):
    from icthp_core.diffusion.draft import FlowModel, build_reward, encode_prompts
    from icthp_core.testing.diffusion import tiny_flux_pipeline, tiny_sd3_pipeline
    from icthp_core.testing.tiny import save_tiny_hp, save_tiny_ict

    pipe = (tiny_sd3_pipeline if arch.startswith("sd3") else tiny_flux_pipeline)()
    all_cond = encode_prompts(pipe, ["a photo of a cat"], max_sequence_length=16)
    model = FlowModel.from_pipeline(pipe)
    model.transformer.to(device, dtype)
    model.vae.to(device, dtype)
    tmp = tempfile.mkdtemp()
    reward = build_reward(
        "ict_hp",
        {"ict": str(save_tiny_ict(f"{tmp}/ict")), "hp": str(save_tiny_hp(f"{tmp}/hp"))},
        device=device,
        dtype=dtype,
    )
    return model, lambda b: all_cond.select([0] * b).to(device, dtype), reward


def run_config(model, cond_fn, reward_fn, params, opt, size, k, batch, steps, iters, warmup, device, swap=None):
    from icthp_core.diffusion.draft import DraftConfig, draft_step
    from icthp_core.diffusion.offload import draft_step_offloaded

    cfg = DraftConfig(num_steps=steps, k=k, height=size, width=size)
    cuda = torch.device(device).type == "cuda"
    amp = next(model.transformer.parameters()).dtype
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    for i in range(warmup + iters):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        noise = model.noise(batch, size, size, gen).to(device)
        with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp != torch.float32):  # as the trainer
            args = (model, reward_fn, ["a photo of a cat"] * batch, cond_fn(batch), noise, cfg)
            if swap is None:
                res = draft_step(*args, rng=rng)
            else:  # sampling, reward, backward phases (the backward runs inside)
                res = draft_step_offloaded(*args, swap, rng=rng)
        if swap is None:
            res.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        del res
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return sum(times) / len(times), peak


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="all", choices=["all", "sd3", "sd3-medium", "flux"])
    ap.add_argument("--sizes", default="512,1024")
    ap.add_argument("--ks", default="1,3")
    ap.add_argument("--batches", default="1,2,4")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default SD3.5 8, FLUX 4)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--dtype", default="bf16", choices=DTYPE_CHOICES)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument(
        "--offload-frozen",
        action="store_true",
        help="frozen weights in pinned CPU memory except in the phase that needs them (as offload_frozen=true)",
    )
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw8bit"])
    ap.add_argument("--vae-tiling", action="store_true", help="decode in tiles of --vae-tile-size px")
    ap.add_argument("--vae-tile-size", type=int, default=512)
    ap.add_argument("--vae-slicing", action="store_true", help="decode one image at a time")
    ap.add_argument("--tiny", action="store_true", help="tiny models on CPU (smoke test): sizes 32/64")
    ap.add_argument(
        "--estimate-only", action="store_true", help="print the memory estimate only (meta-device models, no run)"
    )
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--cudnn-sdpa", action="store_true", help="allow the cuDNN attention kernels (off by default)")
    return ap


def _device_dtype(a: argparse.Namespace) -> tuple[str, torch.dtype]:
    """cuda / cpu (--tiny) / meta (--estimate-only) and the dtype (fp32 for --tiny, whose sizes are capped at 64)."""
    device = "cuda" if torch.cuda.is_available() and not a.tiny else "cpu"
    if a.estimate_only:
        device = "meta"
    if device == "cuda" and not a.cudnn_sdpa:
        # torch 2.11 on an H200 picks cuDNN attention, whose backward failed for FLUX at 1024² ("mha_graph.execute
        # ... is_good()", then illegal memory access); flash / memory-efficient SDPA kernels are used instead
        torch.backends.cuda.enable_cudnn_sdp(False)
    dtype = parse_dtype(a.dtype)
    if a.tiny:
        dtype = torch.float32
        torch.set_num_threads(1)
        if any(int(x) > 64 for x in a.sizes.split(",")):
            a.sizes = "32,64"
    return device, dtype


class _Setup(NamedTuple):
    """One architecture built for the sweep: models, LoRA parameters, optimizer, offload swap (a NamedTuple: the
    tests load this file without registering it as a module, which dataclasses need)."""

    arch: str
    steps: int
    model: object
    cond_fn: object
    reward_fn: object
    params: list
    opt: object
    swap: object
    tile: int
    text_tokens: int
    reward_models: list


def _build(a: argparse.Namespace, arch: str, device: str, dtype: torch.dtype) -> _Setup:
    from icthp_core.diffusion.draft import reward_towers
    from icthp_core.diffusion.lora import add_lora
    from icthp_core.diffusion.offload import draft_swap
    from icthp_core.training.optim import make_optimizer

    t0 = time.time()
    model, cond_fn, reward_fn = (build_tiny if a.tiny else build_real)(arch, device, dtype)
    params = add_lora(model.transformer, a.rank)
    if not a.no_checkpointing:
        model.transformer.enable_gradient_checkpointing()
        model.vae.enable_gradient_checkpointing()
    tile = a.vae_tile_size if not a.tiny else 16  # tiny VAEs: 32/64 px images, so tiling really happens
    model.set_vae_memory(tiling=a.vae_tiling, slicing=a.vae_slicing, tile_size=tile)
    opt = make_optimizer(a.optimizer, params, lr=5e-6)
    swap = draft_swap(model, reward_fn, device) if a.offload_frozen and not a.estimate_only else None
    reward_models = reward_towers(reward_fn)
    text_tokens = cond_fn(1).prompt_embeds.shape[1]
    n_params = sum(p.numel() for p in model.transformer.parameters()) / 1e9
    print(
        f"# {arch}: transformer {n_params:.2f}B params (LoRA {sum(p.numel() for p in params) / 1e6:.1f}M), "
        f"built in {time.time() - t0:.0f}s on {device}",
        flush=True,
    )
    steps = a.steps or DEFAULTS[arch][0]
    return _Setup(arch, steps, model, cond_fn, reward_fn, params, opt, swap, tile, text_tokens, reward_models)


def _estimate(a, s: _Setup, dtype: torch.dtype, size: int, k: int, b: int, row: dict) -> None:
    """The estimator's peak for this configuration (and with offload_frozen, for --estimate-only) into `row`."""
    from icthp_core.diffusion.memory import estimate_draft_memory

    reward_models = s.reward_models
    kw = dict(
        height=size,
        width=size,
        k=min(k, s.steps),
        batch=b,
        text_tokens=s.text_tokens,
        act_bytes=torch.empty((), dtype=dtype).element_size(),
        checkpointing=not a.no_checkpointing,
        optimizer=a.optimizer,
        vae_tiling=a.vae_tiling,
        vae_slicing=a.vae_slicing,
        vae_tile_size=s.tile,
    )
    est = estimate_draft_memory(s.model.transformer, s.model.vae, reward_models, **kw, offload_frozen=a.offload_frozen)
    row["est_gib"] = round(est.total, 2)
    row["estimate"] = est.as_dict()
    if a.estimate_only and not a.no_checkpointing:  # both columns of the docs' table in one command
        off = estimate_draft_memory(s.model.transformer, s.model.vae, reward_models, **kw, offload_frozen=True)
        row["est_offload_gib"] = round(off.total, 2)
        row["estimate_offload"] = off.as_dict()


def _measure(a, s: _Setup, device: str, dtype: torch.dtype, size: int, k: int, b: int) -> dict:
    """One row of the sweep: estimate, then (unless --estimate-only) seconds per iteration and the peak."""
    row = {
        "arch": s.arch,
        "model": "tiny" if a.tiny else DEFAULTS[s.arch][1],
        "size": size,
        "k": k,
        "batch": b,
        "steps": s.steps,
        "dtype": str(dtype).removeprefix("torch."),
        "checkpointing": not a.no_checkpointing,
        "optimizer": a.optimizer,
        "vae_tiling": s.tile if a.vae_tiling else None,
        "vae_slicing": a.vae_slicing,
        "offload_frozen": a.offload_frozen,
    }
    _estimate(a, s, dtype, size, k, b, row)
    if a.estimate_only:
        row.update(sec_per_iter=None, peak_gib=None)
        return row
    try:
        sec, peak = run_config(
            s.model, s.cond_fn, s.reward_fn, s.params, s.opt, size, min(k, s.steps), b, s.steps, a.iters, a.warmup,
            device, s.swap,
        )  # fmt: skip
        row.update(sec_per_iter=round(sec, 3), peak_gib=round(peak, 2))
    except torch.cuda.OutOfMemoryError:
        row.update(sec_per_iter=None, peak_gib="OOM")
        s.opt.zero_grad(set_to_none=True)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def _print_tables(a: argparse.Namespace, rows: list[dict], dev: str) -> None:
    print(
        f"\n{dev}, torch {torch.__version__}, {a.dtype}, checkpointing {not a.no_checkpointing}, "
        f"offload_frozen {a.offload_frozen}\n"
    )
    print(
        "| model | res | steps | K | batch | optimizer | VAE tiling | VAE slicing | s/iter | peak GiB | estimated GiB |"
        "\n|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        tiling = f"{r['vae_tiling']} px" if r["vae_tiling"] else "off"
        print(
            f"| {r['model']} | {r['size']}² | {r['steps']} | {r['k']} | {r['batch']} | {r['optimizer']} | {tiling} "
            f"| {'on' if r['vae_slicing'] else 'off'} | {r['sec_per_iter']} | {r['peak_gib']} | {r['est_gib']} |"
        )
    if a.estimate_only and any("est_offload_gib" in r for r in rows):
        print("\n| model | res | K | batch | estimated GiB | offload_frozen: estimated GiB |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            cells = (r["model"], f"{r['size']}²", r["k"], r["batch"], r["est_gib"], r["est_offload_gib"])
            print("| " + " | ".join(str(c) for c in cells) + " |")


def main(argv: list[str] | None = None) -> list[dict]:
    ap = _parser()
    a = ap.parse_args(argv)
    if a.offload_frozen and a.no_checkpointing:
        ap.error("--offload-frozen needs gradient checkpointing (drop --no-checkpointing)")
    device, dtype = _device_dtype(a)
    archs = ["sd3", "flux"] if a.arch == "all" else [a.arch]
    rows = []
    for arch in archs:
        s = _build(a, arch, device, dtype)
        for size in [int(x) for x in a.sizes.split(",")]:
            for k in [int(x) for x in a.ks.split(",")]:
                for b in [int(x) for x in a.batches.split(",")]:
                    rows.append(_measure(a, s, device, dtype, size, k, b))
                    print(json.dumps(rows[-1]), flush=True)
        del s
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    dev = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    if a.estimate_only:
        dev = "estimate only (meta-device models)"
    _print_tables(a, rows, dev)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": dev, "torch": torch.__version__, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
