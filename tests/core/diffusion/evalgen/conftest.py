"""Fixtures for `icthp evalgen` tests: tiny SD3/FLUX pipelines (saved), LoRAs that change the output, prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
from evalgen_common import PROMPTS, save_random_lora


@pytest.fixture(scope="session")
def pipeline_dirs(tiny_pipeline_dirs) -> dict[str, Path]:
    """The tiny SD3 / FLUX pipelines of the root conftest (shared with the DRaFT tests)."""
    return tiny_pipeline_dirs


@pytest.fixture(scope="session")
def lora_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {a: save_random_lora(a, root / a) for a in ("sd3", "flux")}


@pytest.fixture(scope="session")
def prompt_txt(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n")
    return p
