"""Fixtures for the app tests: tiny reward models in the published layouts and synthetic pictures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from icthp_core.testing.tiny import save_tiny_clip

SKY = [(110, 170, 235), (250, 190, 120), (40, 40, 80), (200, 220, 240), (150, 200, 255), (90, 60, 120)]
GROUND = [(70, 150, 60), (180, 160, 90), (30, 80, 40), (230, 230, 230), (60, 120, 170), (120, 90, 60)]


def scene(i: int, size: tuple[int, int] = (160, 128)) -> Image.Image:
    """A small drawn landscape (sky, ground, a balloon), different for each i."""
    w, h = size
    im = Image.new("RGB", size, SKY[i % len(SKY)])
    d = ImageDraw.Draw(im)
    horizon = int(h * (0.55 + 0.05 * (i % 3)))
    d.rectangle([0, horizon, w, h], fill=GROUND[i % len(GROUND)])
    r = 10 + 3 * (i % 4)
    cx, cy = int(w * (0.25 + 0.12 * (i % 5))), int(h * 0.3 + 6 * math.sin(i))
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(220 - 20 * (i % 3), 30 + 25 * (i % 4), 40))
    d.line([cx, cy + r, cx + 3, horizon - 4], fill=(60, 60, 60), width=1)
    return im


def write_scenes(folder: Path, names: list[str], offset: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, n in enumerate(names):
        p = folder / n
        scene(k + offset).save(p)
        out.append(p)
    return out


@pytest.fixture
def make_scenes():
    """`make_scenes(folder, names, offset=0) -> list[Path]` writes synthetic pictures."""
    return write_scenes


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_ict, tiny_hp) -> dict[str, str]:
    """Sources for ict, hp (the root conftest's tiny models) and a tiny CLIP standing in for the CLIP baseline."""
    clip = save_tiny_clip(tmp_path_factory.mktemp("tiny_models") / "clip", seed=5)
    return {"ict": str(tiny_ict), "hp": str(tiny_hp), "clip": str(clip)}
