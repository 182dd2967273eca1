"""Fixtures for the DRaFT / LoRA / diffusers-transfer tests: tiny pipelines, tiny ICT/HP rewards."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from draft_common import PROMPTS

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs single-threaded (the root conftest's `one_thread`)."""


@pytest.fixture
def sd3_pipe():
    from icthp_core.testing.diffusion import tiny_sd3_pipeline

    pipe = tiny_sd3_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def flux_pipe():
    from icthp_core.testing.diffusion import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(params=["sd3", "flux"])
def pipe(request):
    from icthp_core.testing.diffusion import tiny_flux_pipeline, tiny_sd3_pipeline

    p = {"sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}[request.param](seed=0)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="session")
def tiny_rewards(tmp_path_factory) -> dict[str, str]:
    """Tiny ICT and HP checkpoints in the published layouts (the core's test models)."""
    from icthp_core.testing.tiny import save_tiny_hp, save_tiny_ict

    root = tmp_path_factory.mktemp("rewards")
    return {"ict": str(save_tiny_ict(root / "ict")), "hp": str(save_tiny_hp(root / "hp"))}


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n")
    return p
