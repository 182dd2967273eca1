"""Options of DRaFT LoRA training (`icthp draft`) and their checks; light: no torch or diffusers at import, so
`icthp draft --help` and a bad option answer fast. The trainer is :mod:`icthp_core.diffusion.draft_train`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from icthp_core.errors import ConfigError
from icthp_core.training.config import CommonTrainConfig

__all__ = ["DraftTrainConfig", "check_config"]


@dataclass
class DraftTrainConfig(CommonTrainConfig):
    """DRaFT options; the common ones (`max_steps`, `lr`, `checkpoint_every`, ...) are in CommonTrainConfig."""

    base_model: str = "stabilityai/stable-diffusion-3.5-large-turbo"  # hub id or local diffusers dir
    prompts: str = ""  # .txt / .jsonl / .json / .csv / .tsv / .parquet / Pick-High .pkl (trust_pickle)
    prompt_column: str | None = None
    reward: str = "ict_hp"  # metric or weighted sum "ict:1,hp:0.5"
    reward_sources: dict[str, str] = field(default_factory=dict)  # metric -> hub id / local dir
    reward_dtype: str | None = None  # default: the mixed-precision dtype
    output_dir: str = "draft-lora"
    variant: str = "draft"  # draft | refl | draft_lv
    num_steps: int | None = None  # default 8 (SD3) / 4 (FLUX)
    k: int | None = None  # default 3 (SD3) / 1 (FLUX)
    guidance_scale: float = 0.0
    resolution: int = 1024
    refl_range: tuple[float, float] = (0.75, 1.0)
    lv_copies: int = 2
    kl_weight: float = 0.0
    reward_hinge: float | None = None
    max_sequence_length: int | None = None  # T5 tokens; default SD3 256, FLUX-schnell 256, FLUX-dev 512
    text_cache: bool = True  # embeddings memory-mapped in output_dir/text_cache, reused on resume
    rank: int = 16
    lora_alpha: float | None = None  # default = rank
    lr: float = 5e-6
    weight_decay: float = 1e-2
    batch_size: int = 1
    max_steps: int = 3000
    mixed_precision: str = "bf16"  # no | fp16 | bf16
    gradient_checkpointing: bool = True
    # frozen weights in pinned CPU memory except in the phase that needs them (transformer: sampling + backward;
    # VAE + reward towers: reward); needs gradient_checkpointing (icthp_core/diffusion/offload.py)
    offload_frozen: bool = False
    # memory options of the VAE decode (training decode with gradients and sample grids; docs/draft_lora.md)
    vae_tiling: bool = False  # decode in overlapping tiles of vae_tile_size px (saves memory with checkpointing)
    vae_slicing: bool = False  # decode one image at a time when batch > 1
    vae_tile_size: int = 512  # tile side in pixels (diffusers' default for SD3/FLUX VAEs is 1024: no tiling at 1024²)
    sample_every: int = 100
    sample_prompts: list[str] = field(default_factory=list)  # default: first 4 training prompts
    sample_seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    checkpoint_every: int = 500
    checkpoints_total_limit: int | None = 2
    # reward-hacking monitors on the fixed-seed samples (every sample_every steps; docs/draft_lora.md "Monitors")
    monitor: bool = True
    gold_metrics: list[str] = field(default_factory=lambda: ["jpeg"])  # e.g. [aesthetic, clip, jpeg]
    early_stop_metric: str | None = None  # e.g. "gold/aesthetic", "collapse/diversity" (None: never stop)
    early_stop_drop: float = 0.0  # stop when the metric is below its step-0 value by more than this

    def resolve(self, arch: str) -> DraftTrainConfig:
        """The options with the architecture's defaults (`num_steps`, `k`) filled in where not given."""
        from icthp_core.diffusion.pipelines import ARCH_DEFAULTS

        d = ARCH_DEFAULTS[arch]
        return dataclasses.replace(
            self, num_steps=self.num_steps or d["num_steps"], k=d["k"] if self.k is None else self.k
        )


def check_config(cfg: DraftTrainConfig) -> None:
    """Missing options and option combinations that cannot work (one line naming the key)."""
    if not cfg.prompts:
        raise ConfigError("prompts: required (a .txt/.jsonl/.csv/.tsv/.parquet/.pkl prompt file), e.g. prompts=p.txt")
    if cfg.offload_frozen and not cfg.gradient_checkpointing:
        raise ConfigError(
            "offload_frozen=true needs gradient_checkpointing=true (without it the K steps' activations stay on the "
            "device during the reward phase, so offloading the frozen weights saves little)"
        )
    if cfg.vae_tile_size < 8 or cfg.vae_tile_size % 8:
        raise ConfigError(f"vae_tile_size={cfg.vae_tile_size}: expected a positive multiple of 8 pixels (e.g. 512)")
