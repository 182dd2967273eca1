"""Training configs are validated at load (one ConfigError line before any model is built); a resumed run with
changed options is refused with the differences, or goes on with them when allow_config_change=true; a torn last
checkpoint falls back to the previous complete one."""

from __future__ import annotations

import json
import os
import subprocess

import jobproc
import pytest

from icthp_cli.options import cli_config
from icthp_core.training.config import ConfigError
from icthp_core.training.config_check import check_config
from icthp_core.training.hp import HPConfig
from icthp_core.training.ict import ICTConfig
from tests.core.training.conftest import REPO, common_overrides


def icthp(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The user's path: `icthp JOB key=value ...` in its own process (forked, tests/jobproc.py)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return jobproc.run(list(args), cwd=REPO, env=env, timeout=timeout)


@pytest.mark.parametrize(
    ("cls", "override", "message"),
    [
        (ICTConfig, "max_steps=-5", "max_steps=-5: must be >=1"),
        (ICTConfig, "max_steps=0", "max_steps=0: must be >=1"),
        (ICTConfig, "gradient_accumulation_steps=0", "gradient_accumulation_steps=0: must be >=1"),
        (ICTConfig, "lr=0", "lr=0.0: must be >0"),
        (ICTConfig, "lr=-1e-5", "lr=-1e-05: must be >0"),
        (ICTConfig, "lr=.nan", "lr=nan: must be a finite number"),
        (ICTConfig, "adam_beta2=1", "adam_beta2=1.0: must be >=0 and <1"),
        (ICTConfig, "batch_size=0", "batch_size=0"),
        (ICTConfig, "lr_schedule=cosin", "lr_schedule='cosin': expected one of constant, cosine, linear"),
        (ICTConfig, "best_mode=maximum", "best_mode='maximum'"),
        (HPConfig, "freeze_fraction=1.5", "freeze_fraction=1.5: must be >=0 and <=1"),
        (ICTConfig, "best_metric=accuracy", "best_metric='accuracy': validation reports I2>I1, I3>I2, I3>I1, avg"),
        (HPConfig, "best_metric=ict_hp_upstrem/accuracy", "best_metric='ict_hp_upstrem/accuracy'"),
    ],
)
def test_bad_option_is_one_config_error_at_load(cls, override, message):
    with pytest.raises(ConfigError) as e:
        cli_config(cls, None, ["val_data=v.jsonl", override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_valid_configs_and_recipes_load():
    cfg = cli_config(HPConfig, None, ["recipe=upstream", "val_data=v.jsonl"])
    assert cfg.best_metric == "ict_hp_upstream/accuracy"
    cli_config(ICTConfig, None, ["recipe=paper", "best_metric=avg", "val_data=v.jsonl"])
    cfg = cli_config(ICTConfig, None, ["best_metric=avg"])  # a file may leave val_data to the command line
    with pytest.raises(ConfigError, match="needs val_data"):
        check_config(cfg, complete=True)  # what the training run checks before building anything


@pytest.mark.slow
def test_cli_refuses_bad_options_before_training(tiny_base, synth, tmp_path):
    """`max_steps=-5` once exported the untrained base as "ICT"; a best_metric typo was found after 2,000 steps."""
    for bad, job in (("max_steps=-5", "train-ict"), ("best_metric=ict_hp_upstrem/accuracy", "train-hp")):
        out = tmp_path / job
        r = icthp(job, *common_overrides(tiny_base, synth["train"], out, val_data=synth["val"]), bad)
        assert r.returncode == 2, r.stderr[-2000:]
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and bad.split("=")[0] in lines[0] and "Traceback" not in r.stderr, r.stderr
        assert not any(out.rglob("*.safetensors"))  # nothing trained, nothing exported


def _run(tmp_path, tiny_base, synth, *extra: str) -> subprocess.CompletedProcess:
    """A 4-step ICT run checkpointing every step, as the user runs it: `icthp train-ict key=value ...`."""
    base = common_overrides(
        tiny_base,
        synth["train"],
        tmp_path / "run",
        max_steps=4,
        checkpoint_every=1,
        checkpoints_total_limit=None,
        log_every=1,
        plot=False,
        warmup_steps=0,
    )
    return icthp("train-ict", *base, *extra)


def _lrs(run_dir) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/lr"] for r in rows if "train/lr" in r}


@pytest.mark.slow
def test_resume_with_changed_config_refused_or_applied(tiny_base, synth, tmp_path):
    first = _run(tmp_path, tiny_base, synth, "debug_crash_at_step=2")
    assert first.returncode == 17, first.stderr[-2000:]
    refused = _run(tmp_path, tiny_base, synth, "lr=1e-6")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "options differ from the checkpoint's: lr 0.001 -> 1e-06" in refused.stderr
    assert "allow_config_change=true" in refused.stderr and "Traceback" not in refused.stderr
    applied = _run(tmp_path, tiny_base, synth, "lr=1e-6", "allow_config_change=true")
    assert applied.returncode == 0, applied.stderr[-3000:]
    assert "resumed with changed options (allow_config_change=true): lr 0.001 -> 1e-06" in applied.stderr
    lrs = _lrs(tmp_path / "run")
    assert lrs[1] == pytest.approx(1e-3) and lrs[3] == pytest.approx(1e-6) and lrs[4] == pytest.approx(1e-6)


@pytest.mark.slow
def test_torn_last_checkpoint_falls_back_to_previous(tiny_base, synth, tmp_path):
    first = _run(tmp_path, tiny_base, synth, "debug_crash_at_step=3")
    assert first.returncode == 17, first.stderr[-2000:]
    ckpts = tmp_path / "run" / "checkpoints"
    torn = ckpts / "step_3" / "model.safetensors"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])  # truncated (disk full, copy cut short)
    resumed = _run(tmp_path, tiny_base, synth)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    warn = [x for x in resumed.stderr.splitlines() if "is unreadable" in x]
    assert len(warn) == 1 and "step_3" in warn[0] and "resuming from" in warn[0] and "step_2" in warn[0]
    assert "at step 2" in resumed.stderr and (ckpts / "step_4" / "COMPLETE").is_file()
    # every complete checkpoint torn: one line naming it, no traceback
    for d in ckpts.iterdir():
        for f in d.glob("*.safetensors"):
            f.write_bytes(b"")
    again = _run(tmp_path, tiny_base, synth, "max_steps=5", "allow_config_change=true")
    assert again.returncode == 2 and "no earlier one is complete" in again.stderr and "Traceback" not in again.stderr
