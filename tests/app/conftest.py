"""Fixtures for the app tests: tiny reward models in the published layouts, synthetic pictures, and one live app
server (`icthp app` on loopback) with a page of the module's Chromium per browser module."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from icthp_core.testing.tiny import save_tiny_clip
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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_ict, tiny_hp) -> dict[str, str]:
    """Sources for ict, hp (the root conftest's tiny models) and a tiny CLIP standing in for the CLIP baseline."""
    clip = save_tiny_clip(tmp_path_factory.mktemp("tiny_models") / "clip", seed=5)
    return {"ict": str(tiny_ict), "hp": str(tiny_hp), "clip": str(clip)}


APP_METRICS = ("ict", "hp", "ict_hp", "clip")
WAIT_MS = 60_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen, url: str, log: Path, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            pytest.fail(f"app exited with {proc.returncode}:\n{log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=2).read(100)
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"app did not answer on {url} in {seconds:.0f} s:\n{log.read_text()}")
            time.sleep(0.5)


@pytest.fixture(scope="session")
def server(tiny_models, tmp_path_factory) -> Iterator[dict]:
    """`icthp app` with the tiny models on a free loopback port, started once for every browser module; yields
    `{"url", "root" (the A/B root folder), "tmp", "metrics"}`."""
    tmp = tmp_path_factory.mktemp("app_server")
    root = tmp / "generations"
    root.mkdir()
    port = _free_port()
    cmd = [
        sys.executable, "-m", "icthp_cli", "app",
        "--ict", tiny_models["ict"], "--hp", tiny_models["hp"], "--source", f"clip={tiny_models['clip']}",
        "--metrics", ",".join(APP_METRICS), "--default-metrics", ",".join(APP_METRICS),
        "--ab-root", str(root), "--port", str(port), "--max-images", "8", "--device", "cpu",
    ]  # fmt: skip
    env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp / "gradio"), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    log = open(tmp / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(proc, url, tmp / "server.log")
        yield {"url": url, "root": root, "tmp": tmp, "metrics": APP_METRICS}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


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
