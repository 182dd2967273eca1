"""Fixtures for the DRaFT / LoRA / diffusers-transfer tests: tiny pipelines, tiny ICT/HP rewards."""

from __future__ import annotations

from pathlib import Path

import pytest
from draft_common import PROMPTS


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
def tiny_rewards(tiny_ict, tiny_hp) -> dict[str, str]:
    """The root conftest's tiny ICT and HP checkpoints (the core's test models), as reward sources."""
    return {"ict": str(tiny_ict), "hp": str(tiny_hp)}


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n")
    return p
