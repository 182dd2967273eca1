"""Helpers of the `icthp JOB` tests: run the command as a user would, in its own process, with exit code and output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jobproc
import pytest

REPO = Path(__file__).resolve().parents[2]


def icthp(*args: str, timeout: float = 300, env: dict[str, str] | None = None, launch: list[str] | None = None):
    """`icthp ARGS` in its own process forked from the preloaded server (tests/jobproc.py), or
    `accelerate launch LAUNCH -m icthp_cli ARGS` in a real subprocess."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")])
    if launch is None:
        return jobproc.run(list(map(str, args)), cwd=REPO, env=full_env, timeout=timeout)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "icthp_cli", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def user_error(res: subprocess.CompletedProcess, job: str, *names: str) -> str:
    """Assert the user-error contract: exit 2, exactly one stderr line `icthp JOB: ...` naming each of `names`."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith(f"icthp {job}: "), lines[0]
    for name in names:
        assert name in lines[0], (name, lines[0])
    assert "Traceback" not in res.stderr
    return lines[0]


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic preference data set (triplets with ICT labels, pairs)."""
    from icthp_core.testing.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("toy"), triplets=16, pairs=8, size=32)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A tiny random CLIPModel (HF layout) used as a base model or labelling CLIP."""
    from icthp_core.testing.tiny import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip", seed=0)


def train_args(tiny_clip, toy, out, **extra) -> list[str]:
    """`key=value` options of a short `train-ict` / `train-hp` run on the toy data (2 steps of 4; `extra` overrides)."""
    opts = {"output_dir": out, "train_data": toy["triplets"], "base_model": tiny_clip, "batch_size": 4, "max_steps": 2}
    opts |= {"num_workers": 0, "report_to": "none", "plot": False, "eval_every": 0, "checkpoint_every": 0}
    opts |= {"warmup_steps": 1, "log_every": 1, **extra}
    return [f"{k}={v}" for k, v in opts.items()]


def draft_args(pipeline_dir, tiny_ict, tiny_hp, tmp_path: Path) -> tuple[list[str], Path]:
    """`key=value` options of a one-step DRaFT LoRA run of a tiny pipeline against ICT + HP (two prompts, written to
    `tmp_path`), and its output folder."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red car\na blue house\n")
    out = tmp_path / "lora"
    rewards = json.dumps({"ict": str(tiny_ict), "hp": str(tiny_hp)})
    args = [f"base_model={pipeline_dir}", f"prompts={prompts}", f"reward_sources={rewards}"]
    args += [f"output_dir={out}", "resolution=32", "max_steps=1", "batch_size=2", "rank=4", "mixed_precision=no"]
    args += ["max_sequence_length=16", "sample_every=0", "checkpoint_every=0", "plot=false"]
    return args, out
