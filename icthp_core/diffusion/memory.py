"""Expected peak GPU memory of one DRaFT-K / ReFL training step, printed before training so users learn what fits.

Terms (bytes; `act` = bytes of the activation dtype, 2 for bf16/fp16):
- weights: transformer, VAE and reward towers at their storage dtype; LoRA parameters fp32.
- optimizer: LoRA gradients (fp32) + AdamW moments (2 × fp32, or for bitsandbytes' 8-bit AdamW 2 × 1 byte plus one
  fp32 scale per 256 values for tensors of at least MIN_8BIT_SIZE elements, fp32 moments below).
- transformer activations of the K differentiated steps. Without checkpointing each block keeps about
  ACT_PER_TOKEN_WIDTH × tokens × width × act/2 bytes (Korthikanti et al. 2022: 34·s·h for a 4×-MLP transformer
  layer in 16-bit, no attention-score term since SDPA never materialises the scores). With checkpointing each block
  keeps only its input streams (tokens × width × act), plus one block's full activations while it is recomputed.
- VAE decode with gradients: every decoder ResNet keeps ~VAE_TENSORS_PER_RESNET feature maps (norms run in fp32
  under autocast), the output head keeps three full-resolution maps; with checkpointing only the up-blocks' inputs
  stay, plus the largest up-block's activations while it is recomputed for one decode unit at a time: one tile with
  `vae_tiling`, one image with `vae_slicing`. Without checkpointing every tile
  and image keeps its activations for the backward, so tiling then costs more than the whole image (the tiles
  overlap) and slicing saves nothing.
- reward towers: ViT activations at batch size for the backward to the pixels (same 34·s·h rule).
- `offload_frozen` (`icthp_core.diffusion.offload`): the peak is the largest of three phases, since only one group
  of frozen weights is on the device at a time. Sampling and backward: transformer weights + LoRA/optimizer +
  the K steps' kept activations + one block's transient; reward: VAE + reward weights + LoRA/optimizer + the
  (checkpointed) K steps' saved block inputs + VAE decode + reward activations.

The model is deliberately simple; `bench/bench_draft.py` prints it next to the measured peak at real size, and
`tests/core/diffusion/draft/test_memory.py` checks the activation terms against tensors counted in the autograd graph
of tiny models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from torch import nn

from icthp_core.errors import ConfigError
from icthp_core.training import optim as _optim

GiB = 2**30
ACT_PER_TOKEN_WIDTH = 34  # bytes per token per hidden unit of one transformer layer in 16-bit (see above)
VAE_TENSORS_PER_RESNET = 6  # saved feature maps per decoder ResNet block (2 norms, 2 SiLUs, 2 convs)
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2}  # moments per parameter (8-bit: large tensors + scales)
BNB_BLOCK = 256  # values per fp32 absmax scale in bitsandbytes' blockwise 8-bit optimizer states
TILE_OVERLAP = 0.25  # diffusers AutoencoderKL.tile_overlap_factor


@dataclass
class MemoryEstimate:
    """Expected peak memory (GiB) by term; `total` is what `torch.cuda.max_memory_allocated` should approach."""

    weights: float
    lora_and_optimizer: float
    transformer_activations: float
    vae_decode: float
    reward: float
    total: float
    #: offload_frozen: peak of each phase ("sampling", "reward", "backward"); `total` is their maximum and the
    #: terms above are what each part needs while it is on the device. Empty without offload.
    phases: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        d = {k: round(v, 2) for k, v in asdict(self).items() if k != "phases"}
        d.update({f"phase_{k}": round(v, 2) for k, v in self.phases.items()})
        return d

    def table(self) -> str:
        rows = [(k.replace("_", " "), v) for k, v in asdict(self).items() if k not in ("phases", "total")]
        rows += [(f"phase: {k}", v) for k, v in self.phases.items()]
        rows.append(("total (max over phases)" if self.phases else "total", self.total))
        return "\n".join(f"  {k:24s} {v:7.2f} GiB" for k, v in rows)


def _bytes_of(module: nn.Module | None, only_frozen: bool = True) -> int:
    if module is None:
        return 0
    return sum(p.numel() * p.element_size() for p in module.parameters() if not (only_frozen and p.requires_grad))


def transformer_shape(transformer: nn.Module, height: int, width: int, vae_scale: int = 8) -> tuple[int, int, int]:
    """(image tokens, hidden width, number of blocks) of an SD3 or FLUX transformer at an image size (`vae_scale`×
    smaller latents, then 2×2 patches for both: SD3 patchifies, FLUX packs)."""
    cfg = transformer.config
    d = cfg.num_attention_heads * cfg.attention_head_dim
    blocks = cfg.num_layers + getattr(cfg, "num_single_layers", 0)
    f = 2 * vae_scale
    return (height // f) * (width // f), d, blocks


def transformer_activation_bytes(
    transformer: nn.Module,
    height: int,
    width: int,
    k: int,
    batch: int,
    text_tokens: int,
    act_bytes: int,
    checkpointing: bool,
    vae_scale: int = 8,
) -> tuple[float, float]:
    """(bytes kept for the backward over the K differentiated steps, transient bytes of one block's recompute)."""
    img_tokens, d, blocks = transformer_shape(transformer, height, width, vae_scale)
    tokens = (img_tokens + text_tokens) * batch
    full_block = ACT_PER_TOKEN_WIDTH * tokens * d * act_bytes / 2
    if checkpointing:
        return k * blocks * tokens * d * act_bytes, full_block
    return k * blocks * full_block, 0.0


def optimizer_state_bytes(params, optimizer: str) -> int:
    """Bytes of the optimizer moments of `params` after the first step (exact for torch AdamW and bitsandbytes'
    AdamW8bit; its 256-entry quantisation maps are shared and not counted)."""
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ConfigError(f"optimizer={optimizer!r}: expected one of {sorted(OPTIMIZER_STATE_BYTES)}")
    total = 0
    for p in params:
        n = p.numel()
        if optimizer == "adamw8bit" and n >= _optim.MIN_8BIT_SIZE:  # uint8 moments + fp32 absmax per block
            total += OPTIMIZER_STATE_BYTES["adamw8bit"] * n + 2 * 4 * math.ceil(n / BNB_BLOCK)
        else:
            total += OPTIMIZER_STATE_BYTES["adamw"] * n
    return total


def tiled_extent(n: int, tile: int, scale: int) -> int:
    """Pixels along one side of `n` px that diffusers' `tiled_decode` decodes (tiles of `tile` px every
    `tile`·(1 − overlap), in latent units as diffusers steps them; the last tiles are cut at the border)."""
    lat, tlat = n // scale, tile // scale
    stride = max(int(tlat * (1 - TILE_OVERLAP)), 1)
    return scale * sum(min(tlat, lat - start) for start in range(0, lat, stride))


def vae_decode_bytes(
    vae: nn.Module,
    height: int,
    width: int,
    batch: int,
    act: int,
    checkpointing: bool,
    tile: int | None = None,
    slicing: bool = False,
) -> int:
    """Feature maps the VAE decoder keeps for the backward (fp32 GroupNorm outputs count double in 16-bit).

    `tile`: tile side in px with tiling (diffusers tiles only when the latent is larger than one tile);
    `slicing`: one image at a time."""
    cfg = vae.config
    chans = list(reversed(cfg.block_out_channels))  # decoder goes from the widest to the narrowest
    n_up = len(chans)
    vae_scale = 2 ** (n_up - 1)
    tiled = tile is not None and (height // vae_scale > tile // vae_scale or width // vae_scale > tile // vae_scale)

    def levels(h: int, w: int, b: int) -> list[float]:
        out = []
        for i, c in enumerate(chans):
            scale = 2 ** (n_up - 1 - i)  # the last up block runs at full resolution
            hw = (h // scale) * (w // scale)
            resnets = cfg.layers_per_block + 1
            out.append(resnets * VAE_TENSORS_PER_RESNET * c * hw * b * (act + 4) / 2)
        return out

    def kept(h: int, w: int, b: int) -> float:
        """Tensors outside the checkpointed blocks: the up-blocks' inputs (kept by the checkpoints; with
        checkpointing only) and the output head at full resolution (GroupNorm input, its fp32 output = the SiLU
        input, the SiLU output cast for conv_out)."""
        tail = chans[-1] * h * w * b * (2 * act + 4)
        if not checkpointing:
            return tail
        inputs = sum(
            (chans[max(i - 1, 0)]) * (h // 2 ** (n_up - 1 - i)) * (w // 2 ** (n_up - 1 - i)) * b * act
            for i in range(n_up)
        )
        return tail + inputs

    # the decoded area: with tiling every tile keeps its tensors, the overlaps included
    area_h, area_w = (
        (tiled_extent(height, tile, vae_scale), tiled_extent(width, tile, vae_scale)) if tiled else (height, width)
    )
    if checkpointing:  # + the largest up-block, recomputed for one tile / one image at a time
        h, w = (min(tile, height), min(tile, width)) if tiled else (height, width)
        return int(kept(area_h, area_w, batch) + max(levels(h, w, 1 if slicing else batch)))
    return int(kept(area_h, area_w, batch) + sum(levels(area_h, area_w, batch)))


def estimate_draft_memory(
    transformer: nn.Module,
    vae: nn.Module,
    reward_modules: list[nn.Module] | tuple = (),
    *,
    height: int = 1024,
    width: int = 1024,
    k: int = 3,
    batch: int = 1,
    text_tokens: int = 333,
    act_bytes: int = 2,
    checkpointing: bool = True,
    vae_checkpointing: bool | None = None,
    optimizer: str = "adamw",
    vae_tiling: bool = False,
    vae_slicing: bool = False,
    vae_tile_size: int = 512,
    reward_tokens: int = 257,
    offload_frozen: bool = False,
) -> MemoryEstimate:
    """Expected peak memory of one DRaFT step (see the module docstring for the terms).

    `transformer` carries its LoRA (trainable parameters = LoRA); `reward_modules` are the frozen reward models
    (their image towers are differentiated to the pixels); `act_bytes` 2 for bf16/fp16 autocast, 4 for fp32;
    `optimizer`, `vae_tiling`, `vae_slicing`, `vae_tile_size` as the trainer's options of the same names.
    `offload_frozen`: the peak over the phases of `icthp_core.diffusion.offload` (needs `checkpointing`).
    """
    if offload_frozen and not checkpointing:
        raise ConfigError("offload_frozen needs checkpointing (the trainer refuses the combination)")
    vae_checkpointing = checkpointing if vae_checkpointing is None else vae_checkpointing
    weights_t = _bytes_of(transformer)
    weights_d = _bytes_of(vae) + sum(_bytes_of(m) for m in reward_modules)  # the "decode" group of the offload
    weights = weights_t + weights_d
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    lora = sum(p.numel() for p in trainable)
    lora_opt = lora * (4 + 4) + optimizer_state_bytes(trainable, optimizer)  # params + grads + moments

    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    stored, transient = transformer_activation_bytes(
        transformer, height, width, k, batch, text_tokens, act_bytes, checkpointing, vae_scale
    )
    acts = stored + transient
    tile = vae_tile_size if vae_tiling else None
    vae_b = vae_decode_bytes(vae, height, width, batch, act_bytes, vae_checkpointing, tile, vae_slicing) if k else 0

    reward_act = 0.0
    for m in reward_modules:
        for mod in m.modules():  # every ViT: layers × 34·s·h
            if hasattr(mod, "transformer") and hasattr(mod, "conv1"):
                layers = len(mod.transformer.resblocks)
                width_v = mod.conv1.out_channels
                reward_act += ACT_PER_TOKEN_WIDTH * reward_tokens * batch * width_v * layers * act_bytes / 2
    total = weights + lora_opt + acts + vae_b + reward_act
    phases: dict[str, float] = {}
    if offload_frozen:
        sampling = weights_t + lora_opt + acts  # forward of the K steps: one block's activations live at a time
        phases = {
            "sampling": sampling / GiB,
            "reward": (weights_d + lora_opt + stored + vae_b + reward_act) / GiB,
            "backward": sampling / GiB,  # recompute of one block at a time over the kept block inputs
        }
        total = max(phases.values()) * GiB
    return MemoryEstimate(weights / GiB, lora_opt / GiB, acts / GiB, vae_b / GiB, reward_act / GiB, total / GiB, phases)
