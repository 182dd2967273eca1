"""Fixtures for `icthp evalgen` tests: tiny SD3/FLUX pipelines (in memory and saved), LoRAs that change the output."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

PROMPTS = ["a photo of a cat", "a red car", "a blue house"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run far faster single-threaded on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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


@pytest.fixture(scope="session")
def pipeline_dirs(tmp_path_factory) -> dict[str, Path]:
    from icthp_core.testing.diffusion import save_tiny_pipeline

    root = tmp_path_factory.mktemp("pipes")
    return {a: save_tiny_pipeline(a, root / a) for a in ("sd3", "flux")}


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {a: save_random_lora(a, root / a) for a in ("sd3", "flux")}


@pytest.fixture(scope="session")
def prompt_txt(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n")
    return p
