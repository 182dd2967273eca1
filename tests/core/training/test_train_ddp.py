"""Two CPU processes (gloo) under `accelerate launch`: both stages train, checkpoint and export loadable models."""

from __future__ import annotations

import json

import pytest
import torch

from icthp_core import load_scorer
from tests.core.training.conftest import REPO, common_overrides, run_module

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

LAUNCH = ["--config_file", str(REPO / "train" / "configs" / "accelerate_cpu2.yaml")]


def test_two_process_cpu_training(tiny_base, synth, tmp_path):
    env = {"ACCELERATE_USE_CPU": "true", "MASTER_PORT": "29533"}
    # unlabelled triplets: rank 0 builds the ICT labels while rank 1 waits
    rows = [json.loads(x) for x in synth["train"].read_text().splitlines()]
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text(
        "".join(
            json.dumps(
                {
                    k: (str(synth["train"].parent / v) if k.startswith("image_") else v)
                    for k, v in r.items()
                    if k not in ("E1", "E2", "R1", "R2")
                }
            )
            + "\n"
            for r in rows
        )
    )
    ict = run_module(
        "train-ict",
        common_overrides(
            tiny_base,
            unlabelled,
            tmp_path / "ict",
            max_steps=6,
            batch_size=4,
            checkpoint_every=3,
            theta=0.1,
            log_every=1,
        ),
        env,
        LAUNCH,
    )
    assert ict.returncode == 0, ict.stderr[-4000:]
    ckpt = tmp_path / "ict" / "checkpoints" / "step_6"
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()  # 2 ranks
    assert "2 process(es), DistributedType.MULTI_CPU" in ict.stderr
    # 48 triplets, batch 4 per process, 2 processes -> 6 optimizer steps per epoch: 6 steps = one epoch
    summary = json.loads((tmp_path / "ict" / "ict_summary.json").read_text())
    assert summary["steps"] == 6 and summary["num_processes"] == 2 and summary["exported"]
    assert summary["theta"] == 0.1 and (tmp_path / "ict" / "labels" / "train_labeled.jsonl").is_file()
    # warmup counts optimizer steps, not steps x processes: lr after step k = lr * (k + 1) / warmup_steps
    lrs = {
        r["step"]: r["train/lr"]
        for r in map(json.loads, (tmp_path / "ict" / "metrics.jsonl").read_text().splitlines())
        if "train/lr" in r
    }
    assert lrs[2] == pytest.approx(1e-3 * 3 / 5) and lrs[6] == pytest.approx(1e-3)

    hp = run_module(
        "train-hp",
        common_overrides(
            tiny_base,
            synth["train"],
            tmp_path / "hp",
            max_steps=6,
            batch_size=4,
            head_dims="[32,16,8,4]",
            ict_model=tmp_path / "ict" / "ICT",
            val_data=synth["val"],
        ),
        env,
        LAUNCH,
    )
    assert hp.returncode == 0, hp.stderr[-4000:]
    scorer = load_scorer(ict=tmp_path / "ict" / "ICT", hp=tmp_path / "hp" / "HP", device="cpu")
    img = str(synth["val"].parent / "img" / "t0000_3.png")
    s = scorer.score([img], "a red circle")
    assert set(s) == {"ict", "hp", "ict_hp"} and torch.isfinite(s["ict_hp"]).all()
