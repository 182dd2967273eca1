"""Helpers shared by the `icthp evalgen` tests (a plain module: `conftest` names clash across test folders)."""

from __future__ import annotations

from pathlib import Path

import torch

PROMPTS = ["a photo of a cat", "a red car", "a blue house"]


def tiny_pipe(arch: str):
    from icthp_core.testing.diffusion import tiny_flux_pipeline, tiny_sd3_pipeline

    pipe = {"sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}[arch](seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_random_lora(arch: str, out_dir: Path, seed: int = 0) -> Path:
    """A rank-4 LoRA for the tiny `arch` transformer with random (non-zero) A and B, saved as diffusers writes it."""
    from icthp_core.diffusion.lora import add_lora, save_lora

    transformer = tiny_pipe(arch).transformer
    add_lora(transformer, rank=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return save_lora(transformer, out_dir, metadata={"icthp.reward": "ict_hp"})
