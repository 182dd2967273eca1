"""Fixtures for the app tests: tiny reward models in the published layouts, synthetic pictures, and one live app
server (`icthp app` on loopback) with a page of the module's Chromium per browser module."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from icthp_core.testing.tiny import save_tiny_clip
from tests import shared_models, warm_servers
from tests.paths import REPO

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


def _tiny_models(config: pytest.Config) -> dict[str, str]:
    def build() -> dict[str, str]:
        clip = save_tiny_clip(shared_models.tmp_factory(config).mktemp("tiny_models") / "clip", seed=5)
        ict, hp = shared_models.tiny_ict(config), shared_models.tiny_hp(config)
        return {"ict": str(ict), "hp": str(hp), "clip": str(clip)}

    return shared_models.once("app_tiny_models", build)


@pytest.fixture(scope="session")
def tiny_models(request) -> dict[str, str]:
    """Sources for ict, hp (the root conftest's tiny models) and a tiny CLIP standing in for the CLIP baseline."""
    return _tiny_models(request.config)


APP_METRICS = ("ict", "hp", "ict_hp", "clip")
WAIT_MS = 60_000


def _prepare_server(config: pytest.Config) -> warm_servers.Launch:
    """`icthp app` with the tiny models and an A/B root folder, on a port picked at start."""
    models = _tiny_models(config)
    tmp = shared_models.tmp_factory(config).mktemp("app_server")
    root = tmp / "generations"
    root.mkdir()

    def command(port: int) -> list[str]:
        return [
            sys.executable, "-m", "icthp_cli", "app",
            "--ict", models["ict"], "--hp", models["hp"], "--source", f"clip={models['clip']}",
            "--metrics", ",".join(APP_METRICS), "--default-metrics", ",".join(APP_METRICS),
            "--ab-root", str(root), "--port", str(port), "--max-images", "8", "--device", "cpu",
        ]  # fmt: skip

    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp / "gradio"), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return warm_servers.Launch(command, REPO, env, tmp / "server.log", info={"root": root, "tmp": tmp})


warm_servers.register("app", Path(__file__).parent, "server", _prepare_server)


@pytest.fixture(scope="session")
def server(request) -> Iterator[dict]:
    """`icthp app` with the tiny models on a free loopback port, one per session (started while pytest collects:
    tests/warm_servers.py); yields `{"url", "root" (the A/B root folder), "tmp", "metrics"}`."""
    app = warm_servers.started("app", request.config)
    try:
        app.wait_until_up(300, "app")
        yield {"url": app.url + "/", **app.info, "metrics": APP_METRICS}
    finally:
        app.stop(15)


@pytest.fixture(scope="module")
def page(server, chromium):
    """A fresh page (own context) of the module's Chromium on the app, for one test module."""
    pg = chromium.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    try:
        pg.set_default_timeout(30_000)
        pg.goto(server["url"])
        pg.wait_for_selector("#cmp-run", timeout=WAIT_MS)
        yield pg
    finally:
        pg.context.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    """Where the browser tests save screenshots: $ICTHP_APP_SCREENSHOTS (docs/screenshots/ comes from there)."""
    d = Path(os.environ.get("ICTHP_APP_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    return d
