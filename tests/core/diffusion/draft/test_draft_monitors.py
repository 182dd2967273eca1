"""Reward-hacking monitors: signals on synthetic images, early stop on a synthetic collapse, and in a tiny run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from draft_common import tiny_config

from icthp_core.diffusion.draft_train import DraftTrainConfig, train
from icthp_core.diffusion.monitors import RewardHackingMonitor, gold_metric_fns, pairwise_feature_diversity
from icthp_core.training.metrics_log import read_metrics


def test_pairwise_feature_diversity_hand_values():
    f = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [3.0, 0.0]])  # two prompts x two seeds
    # block 1: unit vectors e1, e2 -> distance sqrt(2); block 2: identical -> 0; mean over blocks
    assert pairwise_feature_diversity(f, groups=2) == pytest.approx(math.sqrt(2) / 2)
    assert pairwise_feature_diversity(f[:2], groups=2) == 0.0  # one seed per prompt: no pairs


def _features(im: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(im.float(), 8).flatten(1)


def test_monitor_signals_and_early_stop_on_synthetic_collapse():
    g = torch.Generator().manual_seed(0)
    healthy = torch.rand(6, 3, 32, 32, generator=g)  # 2 prompts x 3 seeds, diverse textured images
    mild = (healthy * 0.9 + 0.05).clamp(0, 1)
    collapsed = torch.zeros(6, 3, 32, 32)
    collapsed[:, 0] = 1.0  # every seed gives the same flat, fully saturated red image
    prompts = ["a"] * 3 + ["b"] * 3
    gold = gold_metric_fns(["jpeg"], None, "cpu")
    mon = RewardHackingMonitor(gold, _features, early_stop_metric="gold/jpeg", early_stop_drop=0.5)
    v0 = mon.compute(healthy, prompts, 2)
    assert v0["collapse/hist_drift"] == 0.0 and v0["collapse/diversity"] > 0.05 and v0["gold/jpeg"] > 1.0
    assert mon.stop_reason(v0) is None
    v1 = mon.compute(mild, prompts, 2)
    assert mon.stop_reason(v1) is None  # a mild change does not stop the run
    v2 = mon.compute(collapsed, prompts, 2)
    assert v2["collapse/saturation"] == 1.0 and v2["collapse/diversity"] == 0.0
    assert v2["collapse/hist_drift"] > 0.9 and v2["gold/jpeg"] < v0["gold/jpeg"] - 0.5
    reason = mon.stop_reason(v2)
    assert reason and reason.startswith("gold/jpeg fell")
    with pytest.raises(ValueError, match="early_stop_metric"):
        RewardHackingMonitor(gold, None, "gold/aesthetic").stop_reason(v0)


def _cfg(pipe_dir, prompt_file, rewards, out, **kw) -> DraftTrainConfig:
    monitored = dict(
        reward="ict",
        max_steps=2,
        log_every=1,
        sample_every=1,
        num_steps=2,
        k=1,
        sample_prompts=["a held-out castle", "a held-out lake"],
        gold_metrics=["jpeg", "hp"],
    )
    return tiny_config(pipe_dir, prompt_file, rewards, out, **{**monitored, **kw})


@pytest.mark.slow  # 2.0 s: the fast tier runs draft by test_jobs_in_process.py and early stopping below
def test_monitors_logged_and_plotted_in_a_tiny_run(tiny_pipeline_dirs, prompt_file, tiny_rewards, tmp_path):
    train(_cfg(tiny_pipeline_dirs["sd3"], prompt_file, tiny_rewards, tmp_path))
    s = read_metrics(tmp_path / "metrics.jsonl")
    for k in ("gold/jpeg", "gold/hp", "collapse/saturation", "collapse/hist_drift", "collapse/diversity"):
        assert [st for st, _ in s[f"monitor/{k}"]] == [0, 1, 2], k
    assert s["monitor/collapse/hist_drift"][0][1] == 0.0 and all(v > 0 for _, v in s["monitor/gold/jpeg"])
    assert (tmp_path / "curves.png").is_file() and not (tmp_path / "early_stop.json").exists()


def test_early_stop_ends_the_run(tiny_pipeline_dirs, prompt_file, tiny_rewards, tmp_path):
    # a negative margin makes any value a "drop": the run must stop at the first monitored step after step 0
    final = train(
        _cfg(
            tiny_pipeline_dirs["sd3"],
            prompt_file,
            tiny_rewards,
            tmp_path,
            max_steps=5,
            gold_metrics=["jpeg"],
            early_stop_metric="collapse/saturation",
            early_stop_drop=-1.0,
        )
    )
    stop = json.loads((tmp_path / "early_stop.json").read_text())
    assert stop["step"] == 1 and stop["reason"].startswith("collapse/saturation fell")
    assert final.is_file() and max(st for st, _ in read_metrics(tmp_path / "metrics.jsonl")["train/reward"]) == 1
