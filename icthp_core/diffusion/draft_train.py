"""DRaFT-K / ReFL / DRaFT-LV LoRA training of SD3 / SD3.5 and FLUX.1 against ICT, HP, ICT-HP or baseline rewards.

    accelerate launch -m icthp_cli draft --config cfg.yaml [key=value ...]
    icthp draft base_model=stabilityai/stable-diffusion-3.5-large-turbo prompts=p.txt \\
        reward=ict_hp output_dir=out/sd35-icthp

Options use the one training configuration system (:mod:`icthp_core.training.config`: YAML + `key=value` parsed
by `icthp_cli`, the same names as reward training: `max_steps`, `lr`, `checkpoint_every`, `trust_pickle`, ...).
Defaults follow the paper (§4.3, A.2, A.4): SD3.5 8 steps, guidance 0, K=3; FLUX 4 steps, K=1; LoRA on the
attention (FLUX also ff); AdamW 5e-6. Text embeddings are precomputed and the text encoders freed. The math lives
in `icthp_core.diffusion.draft` / `icthp_core.diffusion.lora`; this file is configuration, logging and checkpoints.

Outputs in `output_dir`: `pytorch_lora_weights.safetensors` (diffusers + ComfyUI), `metrics.jsonl`, `curves.png`,
`samples/step_XXXXXX.png` (fixed seeds), `checkpoints/step_<N>/` (resumable, shared checkpoint module).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from icthp_core.diffusion.draft_config import DraftTrainConfig, check_config
from icthp_core.diffusion.pipelines import TEXT_COMPONENTS, load_pipeline, pipeline_info
from icthp_core.dtypes import parse_dtype
from icthp_core.errors import ConfigError
from icthp_core.training.checkpointing import resolve_resume, write_checkpoint
from icthp_core.training.metrics_log import METRICS_FILE, MetricsLog
from icthp_core.training.optim import optimizer_from_config
from icthp_core.training.plots import plot_metrics

if TYPE_CHECKING:
    from icthp_core.diffusion.draft import DraftConfig

#: the panels of `curves.png`: the training reward with the fixed-seed sample reward, then the monitors
DRAFT_PANELS = [
    ("reward", "reward", lambda k: k in ("train/reward", "val/reward")),
    ("held-out gold metrics", "value", lambda k: k.startswith("monitor/gold/")),
    ("collapse signals", "value", lambda k: k.startswith("monitor/collapse/")),
]


# ---------------------------------------------------------------- helpers


def _dtype(name: str) -> torch.dtype:
    return parse_dtype(name)


def save_grid(images: torch.Tensor, path: Path, nrow: int = 4) -> None:
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float().cpu(), path, nrow=nrow)


def _print_memory_plan(cfg, model, reward_fn, cond_all, wdtype, accelerator) -> None:
    """Print the expected peak memory (icthp_core.diffusion.memory) before training starts."""
    from icthp_core.diffusion.draft import reward_towers
    from icthp_core.diffusion.memory import estimate_draft_memory

    if torch.device(accelerator.device).type == "cuda":
        # cuDNN attention's backward failed for FLUX at 1024² on an H200 (torch 2.11, see docs/benchmarks.md);
        # the flash / memory-efficient SDPA kernels are used instead
        torch.backends.cuda.enable_cudnn_sdp(False)
    k = {"draft": cfg.k, "refl": 1}.get(cfg.variant, 1)
    copies = cfg.lv_copies if cfg.variant == "draft_lv" else 1
    reward_models = reward_towers(reward_fn)
    est = estimate_draft_memory(
        model.transformer,
        model.vae,
        reward_models,
        height=cfg.resolution,
        width=cfg.resolution,
        k=k,
        batch=cfg.batch_size * copies,
        text_tokens=cond_all.prompt_embeds.shape[1],
        act_bytes=torch.empty((), dtype=wdtype).element_size(),
        checkpointing=cfg.gradient_checkpointing,
        offload_frozen=cfg.offload_frozen,
        optimizer=cfg.optimizer,
        vae_tiling=cfg.vae_tiling,
        vae_slicing=cfg.vae_slicing,
        vae_tile_size=cfg.vae_tile_size,
    )
    accelerator.print(
        f"expected peak GPU memory per process: {est.total:.1f} GiB (allow ~10% more: measured 3-6% above the "
        f"estimate on an H200)\n{est.table()}"
    )


# ---------------------------------------------------------------- training


def text_conditioning(cfg: DraftTrainConfig, prompts: list[str], negative: bool, dtype: torch.dtype, accelerator):
    """Embeddings of `prompts`: from `output_dir/text_cache` when it matches (memory-mapped; the text encoders are
    then never loaded), else encoded by the main process (written to the cache when `text_cache`)."""
    import hashlib

    from icthp_core.diffusion.draft import (
        encode_prompts,
        iter_encode_prompts,
        load_conditioning_cache,
        save_conditioning_cache,
    )

    key = hashlib.sha256(
        json.dumps(
            {
                "base": cfg.base_model,
                "prompts": prompts,
                "msl": cfg.max_sequence_length,
                "negative": negative,
                "dtype": str(dtype),
            }
        ).encode()
    ).hexdigest()
    cache = Path(cfg.output_dir) / "text_cache"
    cond = load_conditioning_cache(cache, key) if cfg.text_cache else None
    if cfg.text_cache:  # every rank has looked before the main process may write: all ranks take the same branch
        accelerator.wait_for_everyone()  # (else a late rank finds the fresh cache, skips the barrier below: deadlock)
    if cond is not None:
        return cond

    def encoder():
        pipe = load_pipeline(cfg.base_model, dtype, denoiser=False)
        for name in TEXT_COMPONENTS[:3]:
            if getattr(pipe, name, None) is not None:
                getattr(pipe, name).to(accelerator.device)
        return pipe

    if not cfg.text_cache:
        pipe = encoder()
        cond = encode_prompts(pipe, prompts, cfg.max_sequence_length, negative=negative)
    else:
        pipe = None
        if accelerator.is_main_process:
            pipe = encoder()
            save_conditioning_cache(
                iter_encode_prompts(pipe, prompts, cfg.max_sequence_length, negative), len(prompts), cache, key
            )
        accelerator.wait_for_everyone()
        cond = load_conditioning_cache(cache, key)
        if cond is None:
            raise RuntimeError(f"{cache}: the text-embedding cache was not written")
    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return cond


def train(cfg: DraftTrainConfig) -> Path:
    """Run (or resume) training; returns the path of the final LoRA file.

    accelerate's process-wide state is reset afterwards, so several runs (with different precisions) can share
    one Python process (tests, notebooks).
    """
    from accelerate.state import AcceleratorState

    try:
        return _train(cfg)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def _draft_config(cfg: DraftTrainConfig) -> tuple[DraftTrainConfig, str, DraftConfig]:
    """The config resolved for the pipeline's architecture (steps, K, T5 length) and the sampler's DraftConfig."""
    from icthp_core.diffusion.draft import DraftConfig

    arch, guidance_embeds = pipeline_info(cfg.base_model)
    cfg = cfg.resolve(arch)
    if arch == "flux" and cfg.max_sequence_length is None and not guidance_embeds:
        cfg = dataclasses.replace(cfg, max_sequence_length=256)  # FLUX.1-schnell's T5 length
    dcfg = DraftConfig(
        num_steps=cfg.num_steps,
        k=cfg.k,
        variant=cfg.variant,
        height=cfg.resolution,
        width=cfg.resolution,
        refl_range=tuple(cfg.refl_range),
        lv_copies=cfg.lv_copies,
        kl_weight=cfg.kl_weight,
        reward_hinge=cfg.reward_hinge,
    )
    return cfg, arch, dcfg


def _load_model(cfg: DraftTrainConfig, arch: str, wdtype: torch.dtype, device) -> tuple[object, list]:
    """The denoiser and VAE (no text encoders) with the LoRA added; (FlowModel, LoRA parameters)."""
    from icthp_core.diffusion.draft import FlowModel
    from icthp_core.diffusion.lora import add_lora, detect_arch

    pipe = load_pipeline(cfg.base_model, wdtype, text=False)
    if detect_arch(pipe.transformer) != arch:
        raise ConfigError(f"{cfg.base_model}: pipeline class and transformer disagree")
    model = FlowModel.from_pipeline(pipe, cfg.guidance_scale)
    del pipe
    if not cfg.offload_frozen:  # else the VAE and reward towers come to the device only for the reward phase
        model.vae.to(device)
    model.transformer.to(device)
    params = add_lora(model.transformer, cfg.rank, cfg.lora_alpha)
    if cfg.gradient_checkpointing:
        model.transformer.enable_gradient_checkpointing()
        model.vae.enable_gradient_checkpointing()
    model.set_vae_memory(tiling=cfg.vae_tiling, slicing=cfg.vae_slicing, tile_size=cfg.vae_tile_size)
    return model, params


def _build_monitor(cfg: DraftTrainConfig, reward_fn, prompts: list[str], sample_prompts: list[str], accelerator):
    """The reward-hacking monitor of the fixed-seed samples (None when sampling or monitoring is off)."""
    if not (cfg.monitor and cfg.sample_every > 0):
        if cfg.early_stop_metric:
            raise ConfigError("early_stop_metric needs the monitors (monitor=true and sample_every > 0)")
        return None
    from icthp_core.data.preprocess import preprocess_tensor
    from icthp_core.diffusion.monitors import RewardHackingMonitor, gold_metric_fns

    device = accelerator.device
    rmodel = next(iter(reward_fn.scorer.models.values()))
    rmode, rdtype = getattr(rmodel, "preprocess_mode", "crop"), reward_fn.scorer.dtype

    def reward_features(im: torch.Tensor) -> torch.Tensor:
        return rmodel.encode_image(preprocess_tensor(im.float().to(device), rmode).to(rdtype))

    gold = gold_metric_fns(cfg.gold_metrics, cfg.reward_sources or None, device)
    monitor = RewardHackingMonitor(gold, reward_features, cfg.early_stop_metric, cfg.early_stop_drop)
    overlap = set(sample_prompts) & set(prompts)
    if overlap:
        accelerator.print(
            f"monitor: {len(overlap)} of the {len(sample_prompts)} sample prompts are training prompts; "
            "set sample_prompts to held-out prompts for an honest reward-hacking check"
        )
    return monitor


class _DraftRun:
    """One DRaFT run in named phases: `__init__` (setup), `resume`, `step`, `evaluate` (fixed-seed samples and
    monitors), `checkpoint`, `export`; `train` drives them."""

    def __init__(self, cfg: DraftTrainConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from icthp_core.data.prompts import load_prompts
        from icthp_core.diffusion.draft import build_reward
        from icthp_core.diffusion.offload import draft_swap

        check_config(cfg)
        self.out = Path(cfg.output_dir)
        self.accelerator = acc = Accelerator(
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            log_with=None if cfg.report_to in (None, "", "none") else cfg.report_to,
            project_dir=str(self.out),
        )
        set_seed(cfg.seed)
        self.device, self.wdtype = acc.device, _dtype(cfg.mixed_precision)
        self.prompts = load_prompts(cfg.prompts, cfg.prompt_column, cfg.trust_pickle)
        self.sample_prompts = cfg.sample_prompts or self.prompts[:4]
        # text embeddings first (text encoders loaded only for this, then freed), then the denoiser
        self.cfg, arch, self.dcfg = _draft_config(cfg)
        cfg = self.cfg
        all_prompts = list(dict.fromkeys(self.prompts + self.sample_prompts))
        self.index = {p: i for i, p in enumerate(all_prompts)}
        neg = arch == "sd3" and cfg.guidance_scale > 1
        self.cond_all = text_conditioning(cfg, all_prompts, neg, self.wdtype, acc)
        self.model, self.params = _load_model(cfg, arch, self.wdtype, self.device)
        self.reward_fn = build_reward(
            cfg.reward,
            cfg.reward_sources or None,
            device="cpu" if cfg.offload_frozen else self.device,
            dtype=cfg.reward_dtype or ("fp32" if cfg.mixed_precision == "no" else cfg.mixed_precision),
        )
        self.swap = None
        if cfg.offload_frozen:
            self.reward_fn.scorer.device = torch.device(self.device)  # inputs to the device; towers follow per phase
            self.swap = draft_swap(self.model, self.reward_fn, self.device)
        self.monitor = _build_monitor(cfg, self.reward_fn, self.prompts, self.sample_prompts, acc)
        opt = optimizer_from_config(cfg, self.params)
        _print_memory_plan(cfg, self.model, self.reward_fn, self.cond_all, self.wdtype, acc)
        # The transformer is not wrapped in DDP (it runs several forwards per backward, some without graph): the
        # LoRA gradients are averaged across processes by hand before each optimizer step.
        self.opt = acc.prepare(opt)
        self.meta = {
            "icthp.base_model": cfg.base_model,
            "icthp.reward": cfg.reward,
            "icthp.variant": cfg.variant,
            "icthp.k": cfg.k,
            "icthp.steps": cfg.num_steps,
        }
        self.step, self.start = 0, time.time()

    def resume(self) -> None:
        """Load the latest (or the named) checkpoint, then open the metrics log (fresh when nothing resumed)."""
        cfg, acc = self.cfg, self.accelerator
        ck = resolve_resume(cfg.resume, self.out)
        if ck is not None:
            from peft.utils import set_peft_model_state_dict
            from safetensors.torch import load_file

            lora_sd = {k.removeprefix("transformer."): v for k, v in load_file(ck / "lora.safetensors").items()}
            res = set_peft_model_state_dict(self.model.transformer, lora_sd)
            if getattr(res, "unexpected_keys", None):
                raise RuntimeError(f"{ck}/lora.safetensors: unexpected keys {res.unexpected_keys[:5]}")
            self.opt.load_state_dict(torch.load(ck / "optimizer.pt", map_location=self.device, weights_only=True))
            self.step = json.loads((ck / "state.json").read_text())["step"]
            if self.monitor is not None:
                self.monitor.load(ck)
            acc.print(f"resumed from {ck} at step {self.step}")
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
        trackers = cfg.report_to not in (None, "", "none")
        if trackers:
            acc.init_trackers("draft_lora", config={k: str(v) for k, v in dataclasses.asdict(cfg).items()})
        self.log_path = self.out / METRICS_FILE
        self.mlog = MetricsLog(self.log_path, acc, fresh=ck is None, trackers=trackers)

    def log(self, row: dict) -> None:
        self.mlog.log({k: v for k, v in row.items() if k != "step"}, row["step"])

    def _sample(self) -> tuple[list[torch.Tensor], list[str]]:
        """Latents (offload) or images of the fixed-seed grid, and their prompts."""
        from icthp_core.diffusion.draft import generate
        from icthp_core.diffusion.offload import generate_offloaded

        cfg, model, swap = self.cfg, self.model, self.swap
        cond = self.cond_all.select([self.index[p] for p in self.sample_prompts for _ in cfg.sample_seeds])
        noise = torch.cat(
            [
                model.noise(1, cfg.resolution, cfg.resolution, torch.Generator().manual_seed(s))
                for _ in self.sample_prompts
                for s in cfg.sample_seeds
            ]
        ).to(self.device)
        imgs = []
        gen = generate if swap is None else lambda *a: generate_offloaded(*a, swap)  # offload: latents only
        with self.accelerator.autocast():
            for i in range(0, noise.shape[0], max(cfg.batch_size, 1)):
                batch_cond = cond.select(range(i, min(i + cfg.batch_size, noise.shape[0])))
                imgs.append(gen(model, noise[i : i + cfg.batch_size], batch_cond, cfg.num_steps))
        return imgs, [p for p in self.sample_prompts for _ in cfg.sample_seeds]

    def evaluate(self, at: int) -> str | None:
        """Render the fixed-seed grid, log its reward and the monitors; a reason when early stopping fires."""
        imgs, rp = self._sample()
        row, reason, swap = {"step": at}, None, self.swap
        with contextlib.nullcontext() if swap is None else swap.phase("decode"):  # offload: VAE + towers in
            with self.accelerator.autocast(), torch.no_grad():
                if swap is not None:
                    imgs = [self.model.decode(lat) for lat in imgs]
                imgs = torch.cat(imgs)
                row["val/reward"] = self.reward_fn(imgs, rp).float().mean().item()
            if self.monitor is not None:
                values = self.monitor.compute(imgs, rp, len(self.sample_prompts))
                row.update({f"monitor/{k}": v for k, v in values.items()})
                reason = self.monitor.stop_reason(values)
        if self.accelerator.is_main_process:
            save_grid(imgs, self.out / "samples" / f"step_{at:06d}.png", nrow=len(self.cfg.sample_seeds))
        self.log(row)
        return reason

    def checkpoint(self, at: int) -> None:
        from icthp_core.diffusion.lora import save_lora

        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return

        def write(d: Path) -> None:
            save_lora(self.model.transformer, d, self.meta, weight_name="lora.safetensors")
            torch.save(self.opt.state_dict(), d / "optimizer.pt")
            if self.monitor is not None:
                self.monitor.save(d)
            (d / "state.json").write_text(json.dumps({"step": at}))

        write_checkpoint(self.out, at, write, self.cfg.checkpoints_total_limit)

    def _sync_and_clip(self) -> float | None:
        """Average the LoRA gradients across processes by hand, clip them; the norm (None between syncs)."""
        acc, params = self.accelerator, self.params
        if not acc.sync_gradients:
            return None
        if acc.num_processes > 1:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad = acc.reduce(p.grad, reduction="mean")
        return acc.clip_grad_norm_(params, self.cfg.max_grad_norm if self.cfg.max_grad_norm else math.inf)

    def train_step(self) -> dict:
        """One optimizer step over `gradient_accumulation_steps` micro-batches; its means and wall time."""
        from icthp_core.diffusion.draft import draft_step
        from icthp_core.diffusion.offload import draft_step_offloaded

        cfg, acc, model = self.cfg, self.accelerator, self.model
        rng = random.Random(cfg.seed * 1_000_003 + self.step * acc.num_processes + acc.process_index)
        gen = torch.Generator().manual_seed(rng.randrange(2**63))
        t0 = time.time()
        micro: list[tuple[float, float, float | None]] = []
        for _ in range(cfg.gradient_accumulation_steps):
            batch = [rng.choice(self.prompts) for _ in range(cfg.batch_size)]
            cond = self.cond_all.select([self.index[p] for p in batch])
            noise = model.noise(cfg.batch_size, cfg.resolution, cfg.resolution, gen).to(self.device)
            with acc.accumulate(), acc.autocast():
                if self.swap is None:
                    res = draft_step(model, self.reward_fn, batch, cond, noise, self.dcfg, rng=rng, generator=gen)
                    acc.backward(res.loss)
                else:  # three phases; the backward runs inside, res.loss is the true loss value
                    scale = acc.scaler.get_scale() if acc.scaler is not None else 1.0
                    res = draft_step_offloaded(
                        model, self.reward_fn, batch, cond, noise, self.dcfg, self.swap, acc.backward, scale, rng, gen
                    )
                gnorm = self._sync_and_clip()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            micro.append(
                (res.rewards.float().mean().item(), res.loss.item(), None if res.kl is None else res.kl.item())
            )
        self.step += 1
        return {
            "reward": sum(m[0] for m in micro) / len(micro),
            "loss": sum(m[1] for m in micro) / len(micro),
            "grad_norm": float(gnorm) if gnorm is not None else float("nan"),
            "kl": None if micro[0][2] is None else sum(m[2] for m in micro) / len(micro),
            "sec": time.time() - t0,
        }

    def log_window(self, window: list[dict]) -> None:
        """Log the means of the steps since the last log line."""
        row = {
            "step": self.step,
            **{f"train/{k}": sum(w[k] for w in window) / len(window) for k in ("reward", "loss", "grad_norm", "sec")},
        }
        if window[-1]["kl"] is not None:
            row["train/kl"] = sum(w["kl"] for w in window) / len(window)
        if torch.cuda.is_available():
            row["train/max_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.log(row)
        self.accelerator.print(json.dumps(row))

    def after_step(self, window: list[dict]) -> tuple[list[dict], str | None]:
        """Logging, sampling, checkpoints and plots due after a step; (the open log window, a stop reason)."""
        cfg, step, acc, stopped = self.cfg, self.step, self.accelerator, None
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            self.log_window(window)
            window = []
        if cfg.sample_every > 0 and (step % cfg.sample_every == 0 or step == cfg.max_steps):
            stopped = self.evaluate(step)
        if cfg.checkpoint_every > 0 and step % cfg.checkpoint_every == 0:
            self.checkpoint(step)
        if cfg.plot and acc.is_main_process and self.log_path.exists() and step % cfg.log_every == 0:
            plot_metrics(self.log_path, self.out / "curves.png", "DRaFT training", DRAFT_PANELS)
        if stopped:
            acc.print(f"early stop at step {step}: {stopped}")
            if acc.is_main_process:
                (self.out / "early_stop.json").write_text(json.dumps({"step": step, "reason": stopped}))
        return window, stopped

    def export(self) -> Path:
        """Check the replicas agree, write the last checkpoint and the final LoRA file (and the plot)."""
        from icthp_core.diffusion.lora import save_lora

        acc, params = self.accelerator, self.params
        if acc.num_processes > 1:  # the replicas must have stayed identical (gradients all-reduced)
            sums = acc.gather(torch.stack([p.detach().double().sum() for p in params]).unsqueeze(0))
            if not torch.equal(sums, sums[:1].expand_as(sums)):
                raise RuntimeError("LoRA replicas diverged across processes")
        self.checkpoint(self.step)
        final = self.out / "pytorch_lora_weights.safetensors"
        if acc.is_main_process:
            save_lora(self.model.transformer, self.out, self.meta)
            if self.cfg.plot and self.log_path.exists():
                plot_metrics(self.log_path, self.out / "curves.png", "DRaFT training", DRAFT_PANELS)
            acc.print(f"saved {final} after {self.step} iterations ({time.time() - self.start:.0f}s)")
        acc.end_training()
        return final


def _train(cfg: DraftTrainConfig) -> Path:
    run = _DraftRun(cfg)
    run.resume()
    if run.step == 0 and run.cfg.sample_every > 0:
        run.evaluate(0)
    window: list[dict] = []
    while run.step < run.cfg.max_steps:
        window.append(run.train_step())
        window, stopped = run.after_step(window)
        if stopped:
            break
    return run.export()
