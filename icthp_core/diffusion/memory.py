"""Expected peak GPU memory of one DRaFT-K / ReFL training step, printed before training so users learn what fits.

Terms (bytes; `act` = bytes of the activation dtype, 2 for bf16/fp16):
- weights: transformer, VAE and reward towers at their storage dtype; LoRA parameters fp32.
- optimizer: LoRA gradients (fp32) + AdamW moments (2 × fp32, or 2 × 1 byte for 8-bit AdamW).
- transformer activations of the K differentiated steps. Without checkpointing each block keeps about
  ACT_PER_TOKEN_WIDTH × tokens × width × act/2 bytes (Korthikanti et al. 2022: 34·s·h for a 4×-MLP transformer
  layer in 16-bit, no attention-score term since SDPA never materialises the scores). With checkpointing each block
  keeps only its input streams (tokens × width × act), plus one block's full activations while it is recomputed.
- VAE decode with gradients: every decoder ResNet keeps ~VAE_TENSORS_PER_RESNET feature maps (norms run in fp32
  under autocast); with checkpointing only the largest up-block's activations are alive at once.
- reward towers: ViT activations at batch size for the backward to the pixels (same 34·s·h rule).
- `offload_frozen` (`icthp_core.diffusion.offload`): the peak is the largest of three phases, since only one group
  of frozen weights is on the device at a time. Sampling and backward: transformer weights + LoRA/optimizer +
  the K steps' kept activations + one block's transient; reward: VAE + reward weights + LoRA/optimizer + the
  (checkpointed) K steps' saved block inputs + VAE decode + reward activations.

The model is deliberately simple; `bench/bench_draft.py` prints it next to the measured peak at real size, and
`tests/draft/test_memory.py` checks the activation terms against tensors counted in the autograd graph of tiny models.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from torch import nn

GiB = 2**30
ACT_PER_TOKEN_WIDTH = 34  # bytes per token per hidden unit of one transformer layer in 16-bit (see above)
VAE_TENSORS_PER_RESNET = 6  # saved feature maps per decoder ResNet block (2 norms, 2 SiLUs, 2 convs)
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2}


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


def count_params(module: nn.Module | None, trainable: bool | None = None) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if trainable is None or p.requires_grad == trainable)


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


def vae_decode_bytes(vae: nn.Module, height: int, width: int, batch: int, act: int, checkpointing: bool) -> int:
    """Feature maps the VAE decoder keeps for the backward (fp32 GroupNorm outputs count double in 16-bit)."""
    cfg = vae.config
    chans = list(reversed(cfg.block_out_channels))  # decoder goes from the widest to the narrowest
    n_up = len(chans)
    per_level = []
    for i, c in enumerate(chans):
        scale = 2 ** (n_up - 1 - i)  # the last up block runs at full resolution
        hw = (height // scale) * (width // scale)
        resnets = cfg.layers_per_block + 1
        per_level.append(resnets * VAE_TENSORS_PER_RESNET * c * hw * batch * (act + 4) / 2)
    return int(max(per_level) if checkpointing else sum(per_level))


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
    reward_tokens: int = 257,
    offload_frozen: bool = False,
) -> MemoryEstimate:
    """Expected peak memory of one DRaFT step (see the module docstring for the terms).

    `transformer` carries its LoRA (trainable parameters = LoRA); `reward_modules` are the frozen reward models
    (their image towers are differentiated to the pixels); `act_bytes` 2 for bf16/fp16 autocast, 4 for fp32.
    `offload_frozen`: the peak over the phases of `icthp_core.diffusion.offload` (needs `checkpointing`).
    """
    if offload_frozen and not checkpointing:
        raise ValueError("offload_frozen needs checkpointing (the trainer refuses the combination)")
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"optimizer={optimizer!r}: expected one of {sorted(OPTIMIZER_STATE_BYTES)}")
    vae_checkpointing = checkpointing if vae_checkpointing is None else vae_checkpointing
    weights_t = _bytes_of(transformer)
    weights_d = _bytes_of(vae) + sum(_bytes_of(m) for m in reward_modules)  # the "decode" group of the offload
    weights = weights_t + weights_d
    lora = count_params(transformer, trainable=True)
    lora_opt = lora * (4 + 4 + OPTIMIZER_STATE_BYTES[optimizer])  # params + grads + moments

    vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
    stored, transient = transformer_activation_bytes(
        transformer, height, width, k, batch, text_tokens, act_bytes, checkpointing, vae_scale
    )
    acts = stored + transient
    vae_b = vae_decode_bytes(vae, height, width, batch, act_bytes, vae_checkpointing) if k > 0 else 0

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
