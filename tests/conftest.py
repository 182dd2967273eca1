"""Shared fixtures: tiny ICT/HP checkpoints in the published layouts and a folder of test images."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).parent
sys.path.insert(0, str(_TESTS))  # for `reference`
if str(_TESTS.resolve().parent) not in sys.path:  # `tests.*` imports (e.g. `tests.paths.REPO`) under any runner
    sys.path.insert(0, str(_TESTS.resolve().parent))
# Markers (slow, multiprocess, comfyui, browser) are set on the tests themselves: a module's `pytestmark` or a
# decorator, never inferred from names. tests/test_durations.py checks `slow` against the measured durations.
from browser_support import chromium  # noqa: E402,F401  (one Chromium per module)
from durations_plugin import pytest_addoption, pytest_configure  # noqa: E402,F401  (--store-durations)
from scale_data import make_image  # noqa: E402  (the test images; importable by jobproc children too)

from tests import shared_models  # noqa: E402  (session values shared with the early server starts)
from tests.warm_servers import (  # noqa: E402,F401  (live servers start while collecting: tests/app, tests/comfy)
    pytest_collection_finish,
    pytest_itemcollected,
    pytest_sessionfinish,
)


def pytest_sessionstart(session):
    """Start jobproc's forkserver before collection: it imports torch in its own process while pytest collects."""
    import jobproc

    jobproc.warm()


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Every test and fixture runs torch single-threaded, as the job subprocesses do (`OMP_NUM_THREADS=1`): the models
    are tiny, so a second thread adds little on a quiet 2-core machine and costs ~9x the CPU on a loaded one (20 ICT
    steps: 2.6 vs 23.7 CPU s at load 30). A test that needs more threads sets them and restores them itself."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _reset_accelerate_state() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture()
def fresh_accelerate_state():
    """For tests that run training or DRaFT in the pytest process: an Accelerator's process-wide singletons outlive it
    (after `train-ict` here, `Accelerator(mixed_precision="bf16")` raises "AcceleratorState has already been
    initialized"; `draft` resets all but GradientState), so the test starts and ends with none, as a new process
    does."""
    _reset_accelerate_state()
    yield
    _reset_accelerate_state()


@pytest.fixture(scope="session")
def tiny_ict(request) -> Path:
    return shared_models.tiny_ict(request.config)


@pytest.fixture(scope="session")
def tiny_hp(request) -> Path:
    return shared_models.tiny_hp(request.config)


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory) -> Path:
    """Five images of different sizes/aspects/formats (incl. grayscale and RGBA)."""
    d = tmp_path_factory.mktemp("images")
    sizes = [(224, 224), (320, 240), (200, 500), (1024, 768), (97, 131)]
    for i, s in enumerate(sizes):
        img = make_image(i, s)
        if i == 3:
            img.save(d / f"img{i}.jpg", quality=92)
        elif i == 4:
            img.convert("L").save(d / f"img{i}.png")
        else:
            img.save(d / f"img{i}.png")
    make_image(9, (150, 150)).convert("RGBA").save(d / "img5_rgba.png")
    return d


@pytest.fixture(scope="session")
def tiny_pipeline_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny SD3 and FLUX pipelines saved with `save_pretrained` (loaded by the trainer via `from_pretrained`)."""
    from icthp_core.testing.diffusion import save_tiny_pipeline

    root = tmp_path_factory.mktemp("pipes")
    return {a: save_tiny_pipeline(a, root / a) for a in ("sd3", "flux")}


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory) -> Path:
    """HF_HOME of a Hugging Face cache holding tiny random models under the real default repo ids (ICT, HP, every
    baseline, SD3 and FLUX): with `hub_env` the toolkit's real hub loading path runs, offline."""
    from icthp_core.testing.hub_cache import write_hub_cache

    home = tmp_path_factory.mktemp("hf_home")
    write_hub_cache(home)
    return home


@pytest.fixture(scope="session")
def hub_env(hub_home) -> dict[str, str]:
    """Environment for a subprocess that must load from `hub_home` only (offline; any network use fails)."""
    import os

    from live import free_port

    closed = free_port()  # nobody listens: any network use fails
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_HOME=str(hub_home), HF_HUB_OFFLINE="1", HF_ENDPOINT=f"http://127.0.0.1:{closed}", PYTHONUNBUFFERED="1"
    )
    return env
