"""Tiny ICT + HP scorer and a test image for the explanation tests."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def scorer(tiny_ict, tiny_hp):
    from icthp_core.scoring.scorer import load_scorer

    return load_scorer(tiny_ict, tiny_hp, device="cpu")


@pytest.fixture(scope="session")
def wide_image() -> Image.Image:
    """A 320 x 240 image with structure (wider than tall, so the centre crop leaves side bands)."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((320, 240), Image.Resampling.BILINEAR)
