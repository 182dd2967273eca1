"""DRaFT-K, ReFL and DRaFT-LV for flow-matching models (SD3 / SD3.5 and FLUX.1), stateless.

The sampling loop is the Euler flow-matching update x_{i+1} = x_i + (σ_{i+1} − σ_i)·v_θ(x_i, t_i) with the
σ / timesteps the diffusers pipelines compute (a fresh `FlowMatchEulerDiscreteScheduler` from the pipeline's
config; FLUX: σ = linspace(1, 1/N, N) and μ = calculate_shift(sequence length); SD3: the scheduler's static
shift or μ when it uses dynamic shifting). FLUX latents are packed 2×2 into tokens.

Variants (Clark et al. 2023 "DRaFT"; Xu et al. 2023 "ImageReward" ReFL):
- ``draft``: no graph for the first N−K steps, gradients through the last K steps (K=0: no graph at all).
- ``refl``: a random late step s, no graph before it, one step with gradients, decode x0 = x_s − σ_s·v.
- ``draft_lv``: sample without graph, re-noise x0 to σ_{N−1} with `lv_copies` noises, one step with gradients
  each; the reward is averaged over the copies.
Optional regulariser: mean squared difference between the LoRA and the base velocity (adapters disabled) on
every step with gradients (for Gaussian transitions this is the per-step KL up to a constant factor).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from icthp_core.diffusion.lora import adapters_disabled, detect_arch
from icthp_core.errors import ConfigError

RewardFn = Callable[[Tensor, Sequence[str]], Tensor]
VARIANTS = ("draft", "refl", "draft_lv")


@dataclass
class TextConditioning:
    """Precomputed text embeddings (so the text encoders can be freed). One row per prompt."""

    prompt_embeds: Tensor
    pooled: Tensor
    text_ids: Tensor | None = None  # FLUX: [T, 3]
    negative_prompt_embeds: Tensor | None = None  # SD3 classifier-free guidance
    negative_pooled: Tensor | None = None

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def select(self, idx: Sequence[int] | Tensor) -> TextConditioning:
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.prompt_embeds.device)
        pick = lambda t: None if t is None else t.index_select(0, idx.to(t.device))  # noqa: E731
        return replace(
            self,
            prompt_embeds=pick(self.prompt_embeds),
            pooled=pick(self.pooled),
            negative_prompt_embeds=pick(self.negative_prompt_embeds),
            negative_pooled=pick(self.negative_pooled),
        )

    def to(self, device=None, dtype=None) -> TextConditioning:
        mv = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return replace(
            self,
            prompt_embeds=mv(self.prompt_embeds),
            pooled=mv(self.pooled),
            text_ids=None if self.text_ids is None else self.text_ids.to(device=device),
            negative_prompt_embeds=mv(self.negative_prompt_embeds),
            negative_pooled=mv(self.negative_pooled),
        )

    @staticmethod
    def cat(items: Sequence[TextConditioning]) -> TextConditioning:
        def c(name: str) -> torch.Tensor | None:
            return None if getattr(items[0], name) is None else torch.cat([getattr(i, name) for i in items])

        return TextConditioning(
            c("prompt_embeds"), c("pooled"), items[0].text_ids, c("negative_prompt_embeds"), c("negative_pooled")
        )


@torch.no_grad()
def encode_prompts(
    pipe, prompts: Sequence[str], max_sequence_length: int | None = None, negative: bool = False, batch_size: int = 16
) -> TextConditioning:
    """Text embeddings of `prompts` with the pipeline's own `encode_prompt` (SD3 or FLUX), on CPU.

    `negative=True` (SD3 only) also stores the empty-prompt embeddings for classifier-free guidance.
    """
    name = type(pipe).__name__
    arch = "sd3" if name.startswith("StableDiffusion3") else "flux" if name.startswith("Flux") else None
    if arch is None:
        raise ValueError(f"encode_prompts: {name} is not an SD3 or FLUX pipeline")
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        if arch == "sd3":
            kw = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
            pe, npe, pp, npp = pipe.encode_prompt(chunk, chunk, chunk, do_classifier_free_guidance=negative, **kw)
            out.append(
                TextConditioning(
                    pe.cpu(), pp.cpu(), None, None if npe is None else npe.cpu(), None if npp is None else npp.cpu()
                )
            )
        else:
            if negative:
                raise ValueError("negative embeddings (true CFG) are not supported for FLUX")
            kw = {} if max_sequence_length is None else {"max_sequence_length": max_sequence_length}
            pe, pp, ids = pipe.encode_prompt(chunk, chunk, **kw)
            out.append(TextConditioning(pe.cpu(), pp.cpu(), ids.cpu()))
    return TextConditioning.cat(out)


_COND_FIELDS = ("prompt_embeds", "pooled", "negative_prompt_embeds", "negative_pooled")


def save_conditioning_cache(chunks, n: int, cache_dir, key: str) -> TextConditioning:
    """Write TextConditioning chunks (an iterable, `n` rows in all) into memory-mapped files in `cache_dir`
    (one `<field>.bin` per tensor, `meta.json` with shapes and `key`); returns the memory-mapped conditioning."""
    import json
    from pathlib import Path

    d = Path(cache_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "meta.json").unlink(missing_ok=True)  # invalid until complete
    maps: dict[str, Tensor] = {}
    meta: dict = {"key": key, "n": n, "fields": {}}
    row = 0
    text_ids = None
    for c in chunks:
        for f in _COND_FIELDS:
            t = getattr(c, f)
            if t is None:
                continue
            if f not in maps:
                shape = (n, *t.shape[1:])
                (d / f"{f}.bin").unlink(missing_ok=True)
                maps[f] = torch.from_file(str(d / f"{f}.bin"), shared=True, size=math.prod(shape), dtype=t.dtype).view(
                    shape
                )
                meta["fields"][f] = {"shape": list(shape), "dtype": str(t.dtype).removeprefix("torch.")}
            maps[f][row : row + len(c)] = t
        if c.text_ids is not None:
            text_ids = c.text_ids
        row += len(c)
    if row != n:
        raise ValueError(f"expected {n} rows of embeddings, got {row}")
    if text_ids is not None:
        torch.save(text_ids, d / "text_ids.pt")
    del maps
    (d / "meta.json").write_text(json.dumps(meta))
    out = load_conditioning_cache(d, key)
    assert out is not None
    return out


def load_conditioning_cache(cache_dir, key: str) -> TextConditioning | None:
    """The memory-mapped conditioning in `cache_dir` if it was written with the same `key`, else None."""
    import json
    from pathlib import Path

    d = Path(cache_dir)
    try:
        meta = json.loads((d / "meta.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if meta.get("key") != key:
        return None
    tensors = {}
    for f, info in meta["fields"].items():
        shape = tuple(info["shape"])
        tensors[f] = torch.from_file(
            str(d / f"{f}.bin"), shared=False, size=math.prod(shape), dtype=getattr(torch, info["dtype"])
        ).view(shape)
    ids = torch.load(d / "text_ids.pt", weights_only=True) if (d / "text_ids.pt").is_file() else None
    return TextConditioning(
        tensors["prompt_embeds"],
        tensors["pooled"],
        ids,
        tensors.get("negative_prompt_embeds"),
        tensors.get("negative_pooled"),
    )


def iter_encode_prompts(
    pipe, prompts: Sequence[str], max_sequence_length: int | None = None, negative: bool = False, batch_size: int = 16
):
    """`encode_prompts` chunk by chunk (for `save_conditioning_cache`)."""
    for i in range(0, len(prompts), batch_size):
        yield encode_prompts(pipe, prompts[i : i + batch_size], max_sequence_length, negative, batch_size)


def pack_latents(x: Tensor) -> Tensor:
    """FLUX packing [B, C, h, w] → [B, (h/2)(w/2), 4C] (2×2 patches, channel-major within a patch)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: Tensor, h: int, w: int) -> Tensor:
    """Inverse of `pack_latents` for latent height `h` and width `w`."""
    b, _, d = x.shape
    return x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def latent_image_ids(h: int, w: int, device=None, dtype=torch.float32) -> Tensor:
    """FLUX positional ids [(h/2)(w/2), 3] = (0, row, column) of each packed token."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = torch.arange(h // 2)[:, None]
    ids[..., 2] = torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


@dataclass
class FlowModel:
    """The parts of an SD3 / FLUX pipeline DRaFT needs (text encoders not included)."""

    transformer: nn.Module
    vae: nn.Module
    scheduler_config: dict
    guidance_scale: float = 0.0
    arch: str = field(init=False)

    def __post_init__(self) -> None:
        self.arch = detect_arch(self.base)
        self.vae.requires_grad_(False)  # never trained; gradients only pass through it

    @property
    def base(self) -> nn.Module:
        """The transformer without DDP / compile wrappers (for its config and adapters)."""
        m = self.transformer
        while hasattr(m, "module") or hasattr(m, "_orig_mod"):
            m = getattr(m, "module", None) or m._orig_mod
        return m

    @classmethod
    def from_pipeline(cls, pipe, guidance_scale: float = 0.0) -> FlowModel:
        return cls(pipe.transformer, pipe.vae, dict(pipe.scheduler.config), guidance_scale)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        c = self.base.config.in_channels
        return c // 4 if self.arch == "flux" else c

    def latent_hw(self, height: int, width: int) -> tuple[int, int]:
        f = self.vae_scale_factor
        if self.arch == "flux":
            return 2 * (height // (f * 2)), 2 * (width // (f * 2))
        return height // f, width // f

    def noise(
        self, batch: int, height: int, width: int, generator: torch.Generator | None = None, device=None
    ) -> Tensor:
        """Initial Gaussian latents [B, C, h, w] in fp32 (what the pipelines draw with `randn_tensor`)."""
        h, w = self.latent_hw(height, width)
        g_dev = generator.device if generator is not None else device
        return torch.randn(
            batch, self.latent_channels, h, w, generator=generator, device=g_dev, dtype=torch.float32
        ).to(device)

    def schedule(self, num_steps: int, h: int, w: int, device=None) -> tuple[Tensor, Tensor]:
        """(σ [N+1] ending in 0, timesteps [N]) exactly as the diffusers pipeline sets them for latent h×w."""
        import numpy as np
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        cfg = sched.config
        if self.arch == "flux":
            seq = (h // 2) * (w // 2)
            mu = calculate_shift(
                seq,
                cfg.get("base_image_seq_len", 256),
                cfg.get("max_image_seq_len", 4096),
                cfg.get("base_shift", 0.5),
                cfg.get("max_shift", 1.15),
            )
            sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu, device=device)
        else:
            kw = {}
            if cfg.get("use_dynamic_shifting", None):
                p = self.base.config.patch_size
                kw["mu"] = calculate_shift(
                    (h // p) * (w // p),
                    cfg.get("base_image_seq_len", 256),
                    cfg.get("max_image_seq_len", 4096),
                    cfg.get("base_shift", 0.5),
                    cfg.get("max_shift", 1.16),
                )
            sched.set_timesteps(num_steps, device=device, **kw)
        return sched.sigmas.float(), sched.timesteps.float()

    def velocity(self, x: Tensor, t: Tensor, cond: TextConditioning, img_ids: Tensor | None = None) -> Tensor:
        """v_θ for model-layout latents `x` (SD3 [B,C,h,w], FLUX packed) at scheduler timestep `t` (0..1000)."""
        dtype = next(self.base.parameters()).dtype
        xin = x.to(dtype)
        b = x.shape[0]
        if self.arch == "flux":
            guidance = None
            if self.base.config.guidance_embeds:
                guidance = torch.full((b,), self.guidance_scale, device=x.device, dtype=torch.float32)
            v = self.transformer(
                hidden_states=xin,
                timestep=t.expand(b).to(dtype) / 1000,
                guidance=guidance,
                pooled_projections=cond.pooled.to(dtype),
                encoder_hidden_states=cond.prompt_embeds.to(dtype),
                txt_ids=cond.text_ids,
                img_ids=img_ids,
                return_dict=False,
            )[0]
            return v.float()
        cfg = self.guidance_scale > 1.0
        if cfg:
            if cond.negative_prompt_embeds is None:
                raise ValueError("guidance_scale > 1 needs negative embeddings: encode_prompts(..., negative=True)")
            xin = torch.cat([xin, xin])
            pe = torch.cat([cond.negative_prompt_embeds, cond.prompt_embeds]).to(dtype)
            pp = torch.cat([cond.negative_pooled, cond.pooled]).to(dtype)
        else:
            pe, pp = cond.prompt_embeds.to(dtype), cond.pooled.to(dtype)
        v = self.transformer(
            hidden_states=xin,
            timestep=t.expand(xin.shape[0]),
            encoder_hidden_states=pe,
            pooled_projections=pp,
            return_dict=False,
        )[0].float()
        if cfg:
            vu, vc = v.chunk(2)
            v = vu + self.guidance_scale * (vc - vu)
        return v

    def set_vae_memory(self, tiling: bool = False, slicing: bool = False, tile_size: int = 512) -> None:
        """diffusers' VAE tiling (overlapping `tile_size`-px tiles, blended) and slicing (one image at a time) for
        every `decode`. The SD3/FLUX VAEs' own tile size is their `sample_size` (1024 px), which never tiles a
        1024² image, so the tile size is set here."""
        vae = self.vae
        if tiling:
            vae.enable_tiling()
            vae.tile_sample_min_size = tile_size
            vae.tile_latent_min_size = tile_size // self.vae_scale_factor
        else:
            vae.disable_tiling()
        if slicing:
            vae.enable_slicing()
        else:
            vae.disable_slicing()

    def decode(self, latents: Tensor) -> Tensor:
        """VAE-decode unpacked latents [B,C,h,w] → images [B,3,H,W] in 0..1 (differentiable)."""
        cfg = self.vae.config
        z = latents / cfg.scaling_factor + (cfg.shift_factor or 0.0)
        img = self.vae.decode(z.to(next(self.vae.parameters()).dtype), return_dict=False)[0]
        return (img.float() / 2 + 0.5).clamp(0, 1)


@dataclass
class DraftConfig:
    """Sampling/grad settings of one DRaFT step (paper defaults: SD3.5 8 steps K=3, FLUX 4 steps K=1)."""

    num_steps: int = 8
    k: int = 3
    variant: str = "draft"
    height: int = 1024  # image size callers draw noise for (`FlowModel.noise`); `sample` follows the noise
    width: int = 1024
    refl_range: tuple[float, float] = (0.75, 1.0)  # ReFL: step index drawn from [lo·N, hi·N) ∩ [0, N)
    lv_copies: int = 2
    kl_weight: float = 0.0
    reward_hinge: float | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.num_steps < 1:
            raise ConfigError(f"num_steps must be >= 1, got {self.num_steps}")
        if not 0 <= self.k <= self.num_steps:
            raise ConfigError(f"k must be in [0, num_steps={self.num_steps}], got {self.k}")
        if self.variant == "draft_lv" and self.lv_copies < 1:
            raise ConfigError(f"lv_copies must be >= 1, got {self.lv_copies}")


@dataclass
class SampleOutput:
    images: Tensor | None  # [B·copies, 3, H, W] in 0..1 (graph through the steps with gradients); None: no decode
    latents: Tensor  # final unpacked latents
    grad_steps: list[int]  # indices of the steps run with gradients
    kl: Tensor | None  # mean squared velocity difference to the base model over grad steps
    copies: int = 1  # DRaFT-LV: images are [copies × B] (copy-major)


def sample(
    model: FlowModel,
    noise: Tensor,
    cond: TextConditioning,
    cfg: DraftConfig,
    rng: random.Random | None = None,
    generator: torch.Generator | None = None,
    decode: bool = True,
) -> SampleOutput:
    """Run the sampling chain from `noise` [B,C,h,w]; gradients flow only through the steps chosen by `cfg`.

    ``draft`` with K=0 builds no graph at all (plain sampling). `rng` draws the ReFL step; `generator` the
    DRaFT-LV noises. `decode=False` stops at the latents (`images` is None; `icthp_core.diffusion.offload`).
    """
    n, arch = cfg.num_steps, model.arch
    b, _, h, w = noise.shape
    if len(cond) != b:
        raise ValueError(f"{len(cond)} conditionings for a batch of {b} latents")
    device = noise.device
    sigmas, timesteps = model.schedule(n, h, w, device=device)
    cond = cond.to(device)
    img_ids = latent_image_ids(h, w, device) if arch == "flux" else None
    x = pack_latents(noise.float()) if arch == "flux" else noise.float()

    if cfg.variant == "draft":
        grad_from, stop = n - cfg.k, n
    elif cfg.variant == "refl":
        lo = min(int(cfg.refl_range[0] * n), n - 1)
        hi = max(min(math.ceil(cfg.refl_range[1] * n), n), lo + 1)
        grad_from = (rng or random).randrange(lo, hi)
        stop = grad_from + 1
    else:
        grad_from, stop = n, n

    kl_terms: list[Tensor] = []
    grad_steps: list[int] = []

    def step(i: int, x: Tensor, with_grad: bool, to_x0: bool = False) -> Tensor:
        with torch.set_grad_enabled(with_grad):
            v = model.velocity(x, timesteps[i], cond_i, img_ids)
            if with_grad and cfg.kl_weight > 0:
                with torch.no_grad(), adapters_disabled(model.base):
                    vb = model.velocity(x, timesteps[i], cond_i, img_ids)
                kl_terms.append((v - vb).pow(2).mean())
            if to_x0:
                return x - sigmas[i] * v
            return x + (sigmas[i + 1] - sigmas[i]) * v

    cond_i = cond
    for i in range(stop):
        with_grad = i >= grad_from
        if with_grad:
            grad_steps.append(i)
        x = step(i, x, with_grad, to_x0=(cfg.variant == "refl" and i == stop - 1))

    copies = 1
    if cfg.variant == "draft_lv":
        copies = cfg.lv_copies
        s = sigmas[n - 1]
        x0 = x.detach()
        eps = torch.randn(
            (copies, *x0.shape),
            generator=generator,
            device=generator.device if generator else None,
            dtype=torch.float32,
        ).to(device)
        xs = ((1 - s) * x0.unsqueeze(0) + s * eps).reshape(copies * b, *x0.shape[1:])
        cond_i = TextConditioning.cat([cond] * copies)
        x = step(n - 1, xs, True, to_x0=True)
        grad_steps.append(n - 1)

    lat = unpack_latents(x, h, w) if arch == "flux" else x
    images = None
    if decode:
        with torch.set_grad_enabled(bool(grad_steps)):
            images = model.decode(lat)
    kl = torch.stack(kl_terms).mean() if kl_terms else None
    return SampleOutput(images, lat, grad_steps, kl, copies)


@torch.no_grad()
def generate(model: FlowModel, noise: Tensor, cond: TextConditioning, num_steps: int) -> Tensor:
    """Plain sampling (no graph): images [B,3,H,W] in 0..1, as the pipeline with `output_type="pt"`."""
    cfg = DraftConfig(num_steps=num_steps, k=0, variant="draft")
    return sample(model, noise, cond, cfg).images


def reward_loss(rewards: Tensor, hinge: float | None = None) -> Tensor:
    """−mean(reward), or with a hinge mean(relu(hinge − reward)): no push once an image reaches `hinge`."""
    if hinge is None:
        return -rewards.mean()
    return torch.relu(hinge - rewards).mean()


@dataclass
class StepOutput:
    loss: Tensor
    rewards: Tensor  # [B·copies], detached
    kl: Tensor | None
    images: Tensor  # detached
    grad_steps: list[int]


def draft_step(
    model: FlowModel,
    reward_fn: RewardFn,
    prompts: Sequence[str],
    cond: TextConditioning,
    noise: Tensor,
    cfg: DraftConfig,
    rng: random.Random | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """One DRaFT/ReFL/DRaFT-LV forward: sample, decode, reward; returns the loss to backpropagate."""
    out = sample(model, noise, cond, cfg, rng=rng, generator=generator)
    prompts = list(prompts) * out.copies
    rewards = reward_fn(out.images, prompts)
    if rewards.shape != (out.images.shape[0],):
        raise ValueError(f"reward_fn must return shape [{out.images.shape[0]}], got {tuple(rewards.shape)}")
    loss = reward_loss(rewards.float(), cfg.reward_hinge)
    if out.kl is not None:
        loss = loss + cfg.kl_weight * out.kl
    return StepOutput(
        loss, rewards.detach(), None if out.kl is None else out.kl.detach(), out.images.detach(), out.grad_steps
    )


def parse_reward_spec(spec: str) -> dict[str, float]:
    """'ict_hp' → {'ict_hp': 1.0}; 'ict:1,hp:0.5' → weighted sum of metrics."""
    out: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, wt = part.partition(":")
        try:
            out[name.strip()] = float(wt) if wt else 1.0
        except ValueError:
            raise ConfigError(f"bad reward weight in {part!r} (spec {spec!r}); use 'metric:weight'") from None
    if not out:
        raise ConfigError(f"empty reward spec {spec!r}")
    return out


def weighted_reward(fns: dict[str, RewardFn], weights: dict[str, float]) -> RewardFn:
    """Σ_m w_m · reward_m(images, prompts)."""

    def fn(images: Tensor, prompts: Sequence[str]) -> Tensor:
        return sum(weights[m] * fns[m](images, prompts).float() for m in weights)

    return fn


def build_reward(spec: str, sources: dict[str, str] | None = None, device=None, dtype="fp32") -> RewardFn:
    """A differentiable reward from the scoring core (`MultiScorer.reward`, ICT/HP shared between `ict`, `hp`,
    `ict_hp`); `spec` is one metric or a weighted sum ('ict:1,hp:0.5'). The reward towers are frozen."""
    from icthp_core.scoring.scorer import MultiScorer

    weights = parse_reward_spec(spec)
    scorer = MultiScorer(list(weights), sources=sources, device=device, dtype=dtype)
    for m in scorer.models.values():
        m.eval().requires_grad_(False)
    fns = {m: (lambda mm: lambda im, pr: scorer.reward(im, list(pr), metric=mm))(m) for m in weights}
    fn = weighted_reward(fns, weights)
    fn.scorer = scorer  # type: ignore[attr-defined]
    return fn


def reward_towers(reward_fn: RewardFn) -> list[torch.nn.Module]:
    """The frozen reward models behind a `build_reward` reward ([] for a plain function)."""
    scorer = getattr(reward_fn, "scorer", None)
    return list(scorer.models.values()) if scorer is not None else []
