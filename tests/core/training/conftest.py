"""Shared fixtures of the training tests: a tiny base CLIP and a synthetic preference data set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jobproc
import pytest

from tests.paths import REPO


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny random CLIPModel checkpoint (HF layout + config.json) used as `base_model`."""
    from icthp_core.testing.tiny import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("base") / "clip", seed=0)


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> dict[str, Path]:
    """Synthetic train/val triplets and pairs (quality = brightness + sharpness)."""
    from icthp_core.testing.synthetic import make_dataset

    root = tmp_path_factory.mktemp("synth")
    train = make_dataset(root / "train", triplets=48, pairs=48, seed=0)
    val = make_dataset(root / "val", triplets=32, pairs=64, seed=1)
    return {
        "train": train["triplets"],
        "val": val["triplets"],
        "train_pairs": train["pairs"],
        "val_pairs": val["pairs"],
    }


def common_overrides(base: Path, train: Path, out: Path, **extra) -> list[str]:
    opts = {
        "output_dir": out,
        "train_data": train,
        "base_model": base,
        "batch_size": 8,
        "lr": 1e-3,
        "warmup_steps": 5,
        "num_workers": 0,
        "cache_images": True,
        "report_to": "none",
        "plot": True,
        "log_every": 5,
        "eval_every": 0,
        "checkpoint_every": 0,
    }
    opts.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in opts.items()]


def run_module(
    job: str,
    args: list[str],
    env_extra: dict[str, str] | None = None,
    launch: list[str] | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    """Run `icthp JOB args` from the repo root in its own process, output captured: forked from the preloaded server
    (tests/jobproc.py), or under `accelerate launch` in a real subprocess."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if launch is None:
        return jobproc.run([job, *args], cwd=REPO, env=env, timeout=timeout)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "icthp_cli", job, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def _fresh_accelerate_state(fresh_accelerate_state):
    """In-process training runs each build an Accelerator: accelerate's process-wide singletons are reset around each
    test (tests/conftest.py), as a new process would start (e.g. mixed precision differs between tests)."""


def train_ict_main(overrides: list[str]) -> dict:
    """Train ICT in this process from `key=value` overrides (the command line's form); returns the summary."""
    from icthp_cli.options import cli_config
    from icthp_core.training.ict import ICTConfig, train

    return train(cli_config(ICTConfig, None, overrides))


def train_hp_main(overrides: list[str]) -> dict:
    """Train HP in this process from `key=value` overrides; returns the summary."""
    from icthp_cli.options import cli_config
    from icthp_core.training.hp import HPConfig, train

    return train(cli_config(HPConfig, None, overrides))
