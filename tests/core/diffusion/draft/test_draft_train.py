"""train/draft_lora.py end to end on tiny pipelines with the core's tiny ICT-HP reward."""

from __future__ import annotations

import json
import math

import pytest
import torch
from draft_common import tiny_config
from live import free_port
from safetensors.torch import load_file

from icthp_cli.draft import parse_config
from icthp_core.data.prompts import load_prompts
from icthp_core.diffusion.draft_train import train
from tests.paths import REPO

_cfg = tiny_config


def _log(out):
    """metrics.jsonl rows with the `train/` / `val/` prefixes dropped (reward, loss, ...; val/reward = eval_reward)."""
    rows = []
    for ln in (out / "metrics.jsonl").read_text().splitlines():
        row = json.loads(ln)
        rows.append({("eval_reward" if k == "val/reward" else k.split("/", 1)[-1]): v for k, v in row.items()})
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_short_run_increases_fixed_seed_reward(arch, tiny_pipeline_dirs, prompt_file, tiny_rewards, tmp_path):
    out = tmp_path / arch
    final = train(_cfg(tiny_pipeline_dirs[arch], prompt_file, tiny_rewards, out))
    evals = [r["eval_reward"] for r in _log(out) if "eval_reward" in r]
    assert len(evals) == 2  # step 0 and the last step, same prompts and seeds
    assert evals[1] > evals[0] + 1e-4, evals
    train_rows = [r for r in _log(out) if "reward" in r]
    assert len(train_rows) == 4 and all(r["grad_norm"] > 0 for r in train_rows)
    assert final.is_file() and (out / "curves.png").is_file()
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000000.png", "step_000008.png"]
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_steps"], cfg["k"]) == ((8, 3) if arch == "sd3" else (4, 1))  # paper defaults


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tiny_pipeline_dirs, prompt_file, tiny_rewards, tmp_path, monkeypatch):
    import icthp_core.diffusion.draft_train as mod

    kw = dict(sample_every=0, num_steps=4, k=2)
    full = train(_cfg(tiny_pipeline_dirs["sd3"], prompt_file, tiny_rewards, tmp_path / "a", max_steps=4, **kw))
    part = tmp_path / "b"
    train(_cfg(tiny_pipeline_dirs["sd3"], prompt_file, tiny_rewards, part, max_steps=2, **kw))
    calls = []
    real = mod.load_pipeline
    monkeypatch.setattr(mod, "load_pipeline", lambda *a, **k: calls.append(k) or real(*a, **k))
    resumed = train(_cfg(tiny_pipeline_dirs["sd3"], prompt_file, tiny_rewards, part, max_steps=4, **kw))
    assert calls == [{"text": False}]  # text embeddings came from the cache: no text encoder loaded
    a, b = load_file(full), load_file(resumed)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    assert [r["step"] for r in _log(part) if "reward" in r] == [2, 4]


@pytest.mark.slow
def test_sd3_cfg_training_run(tiny_pipeline_dirs, prompt_file, tiny_rewards, tmp_path):
    final = train(
        _cfg(
            tiny_pipeline_dirs["sd3"],
            prompt_file,
            tiny_rewards,
            tmp_path,
            max_steps=1,
            num_steps=2,
            k=1,
            guidance_scale=3.0,
            sample_every=1,
            lr=1e-3,
        )
    )
    assert final.is_file() and [r["step"] for r in _log(tmp_path) if "eval_reward" in r] == [0, 1]


def test_parse_config_yaml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("prompts: p.txt\nreward: 'ict:1,hp:0.5'\nrank: 8\nreward_sources: {ict: /x}\nrefl_range: [0.5, 1.0]\n")
    cfg = parse_config(
        ["--config", str(y), "rank=4", "variant=refl", "reward_hinge=0.9", "gradient_checkpointing=false", "k=null"]
    )
    assert (cfg.prompts, cfg.reward, cfg.rank, cfg.variant) == ("p.txt", "ict:1,hp:0.5", 4, "refl")
    assert cfg.reward_sources == {"ict": "/x"} and cfg.refl_range == (0.5, 1.0)
    assert cfg.reward_hinge == 0.9 and cfg.gradient_checkpointing is False and cfg.k is None
    assert cfg.lr == 5e-6  # paper default
    y.write_text("prompts: p.txt\nrnak: 3\n")
    with pytest.raises(ValueError, match="rnak"):
        parse_config(["--config", str(y)])
    # old names give one line naming the new one; the --key value form is refused with the key=value form shown
    y.write_text("prompts: p.txt\niterations: 3\n")
    with pytest.raises(ValueError, match="'iterations' was renamed to 'max_steps'"):
        parse_config(["--config", str(y)])
    with pytest.raises(ValueError, match="rank=VALUE"):
        parse_config(["prompts=p.txt", "--rank", "4"])
    with pytest.raises(ValueError, match="'learning_rate' was renamed to 'lr'"):
        parse_config(["prompts=p.txt", "learning_rate=1e-3"])


def test_load_prompts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    (tmp_path / "b.jsonl").write_text('{"prompt": "x"}\n"y"\n')
    (tmp_path / "c.tsv").write_text("Prompt\tCategory\nhello\tA\n")
    assert load_prompts(tmp_path / "a.txt") == ["one", "two"]
    assert load_prompts(tmp_path / "b.jsonl") == ["x", "y"]
    assert load_prompts(tmp_path / "c.tsv") == ["hello"]
    import pandas as pd

    pd.DataFrame({"easy_prompt": ["easy one"], "refine_prompt": ["a refined, detailed one"]}).to_pickle(
        tmp_path / "d.pkl"
    )
    with pytest.raises(ValueError, match="allow_pickle"):
        load_prompts(tmp_path / "d.pkl")
    assert load_prompts(tmp_path / "d.pkl", allow_pickle=True) == ["easy one"]
    assert load_prompts(tmp_path / "d.pkl", "refine_prompt", allow_pickle=True) == ["a refined, detailed one"]
    with pytest.raises(ValueError, match="nope"):
        load_prompts(tmp_path / "b.jsonl", column="nope")


def test_weighted_reward_spec(tiny_rewards):
    from icthp_core.diffusion.draft import build_reward, parse_reward_spec

    assert parse_reward_spec("ict:1, hp:0.5") == {"ict": 1.0, "hp": 0.5}
    fn = build_reward("ict:1,hp:0.5,ict_hp:2", tiny_rewards)
    single = build_reward("ict_hp", tiny_rewards)
    x = torch.rand(2, 3, 40, 48, requires_grad=True)
    r = fn(x, ["a cat", "a dog"])
    s = fn.scorer
    expect = (
        s.reward(x, ["a cat", "a dog"], "ict")
        + 0.5 * s.reward(x, ["a cat", "a dog"], "hp")
        + 2 * single(x, ["a cat", "a dog"])
    )
    torch.testing.assert_close(r, expect)
    r.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for m in s.models.values() for p in m.parameters())


@pytest.mark.slow
@pytest.mark.parametrize(
    "kw",
    [
        dict(mixed_precision="bf16"),
        dict(variant="draft_lv", lv_copies=2, kl_weight=0.1, reward_hinge=0.5),
        dict(variant="refl", gradient_accumulation_steps=2, reward="ict:1,hp:0.5"),
    ],
)
def test_trainer_variants_run(kw, tiny_pipeline_dirs, prompt_file, tiny_rewards, tmp_path):
    final = train(
        _cfg(
            tiny_pipeline_dirs["flux"],
            prompt_file,
            tiny_rewards,
            tmp_path,
            max_steps=2,
            log_every=1,
            sample_every=0,
            lr=1e-3,
            **kw,
        )
    )
    rows = [r for r in _log(tmp_path) if "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
    assert ("kl" in rows[0]) == ("kl_weight" in kw)
    sd = load_file(final)
    assert all(v.dtype == torch.float32 for v in sd.values())
    from icthp_core.diffusion.lora import read_lora_metadata

    meta = read_lora_metadata(final)
    assert meta["icthp.variant"] == kw.get("variant", "draft") and meta["icthp.base_arch"] == "flux"
    assert meta["icthp.reward"] == kw.get("reward", "ict_hp") and meta["icthp.steps"] == "4"


def test_conditioning_cache_roundtrip(sd3_pipe, tmp_path):
    from icthp_core.diffusion.draft import (
        encode_prompts,
        iter_encode_prompts,
        load_conditioning_cache,
        save_conditioning_cache,
    )

    prompts = ["a cat", "a dog", "a red car", "a blue house", "grass"]
    ref = encode_prompts(sd3_pipe, prompts, 16, negative=True)
    got = save_conditioning_cache(iter_encode_prompts(sd3_pipe, prompts, 16, True, batch_size=2), 5, tmp_path, "k1")
    for f in ("prompt_embeds", "pooled", "negative_prompt_embeds", "negative_pooled"):
        torch.testing.assert_close(getattr(got, f), getattr(ref, f), rtol=1e-5, atol=1e-5)  # batch 2 vs 5
    again = load_conditioning_cache(tmp_path, "k1")
    assert torch.equal(again.select([4, 1]).prompt_embeds, got.prompt_embeds[[4, 1]])
    assert load_conditioning_cache(tmp_path, "other") is None
    assert load_conditioning_cache(tmp_path / "missing", "k1") is None


def test_text_cache_ranks_take_the_same_branch(tiny_pipeline_dirs, tmp_path):
    """A rank that starts after the main process has written the text cache must not find it and skip the barrier
    the main process waits in (a 2-process run hung: rank 0 in that barrier, rank 1 in the first gradient all-reduce).
    Two threads play the ranks; rank 1 starts only once rank 0 waits in a barrier."""
    import threading

    from icthp_core.diffusion.draft_config import DraftTrainConfig
    from icthp_core.diffusion.draft_train import text_conditioning

    barrier = threading.Barrier(2, timeout=20)

    class Rank:
        device = torch.device("cpu")

        def __init__(self, main: bool):
            self.is_main_process = main

        def wait_for_everyone(self):
            barrier.wait()

    cfg = DraftTrainConfig(base_model=str(tiny_pipeline_dirs["sd3"]), prompts="p.txt", output_dir=str(tmp_path))
    got, errors = {}, []

    def rank(i: int) -> None:
        try:
            got[i] = text_conditioning(cfg, ["a cat", "a dog"], False, torch.float32, Rank(i == 0))
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    first = threading.Thread(target=rank, args=(0,))
    first.start()
    while barrier.n_waiting == 0 and first.is_alive():
        first.join(0.01)
    second = threading.Thread(target=rank, args=(1,))
    second.start()
    first.join(60), second.join(60)
    assert not errors and set(got) == {0, 1}, errors
    assert torch.equal(got[0].prompt_embeds, got[1].prompt_embeds)
    assert (tmp_path / "text_cache" / "meta.json").is_file()


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_process_run_keeps_replicas_identical(tiny_pipeline_dirs, prompt_file, tiny_rewards, tmp_path):
    """torchrun with 2 CPU processes (gloo): LoRA gradients are all-reduced, replicas checked equal at the end."""
    import os
    import subprocess
    import sys

    port = str(free_port())
    root = REPO
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        port,
        "-m",
        "icthp_cli",
        "draft",
        f"base_model={tiny_pipeline_dirs['flux']}",
        f"prompts={prompt_file}",
        "reward=ict_hp",
        f"reward_sources={json.dumps(tiny_rewards)}",
        f"output_dir={out}",
        "resolution=32",
        "max_steps=2",
        "mixed_precision=no",
        "log_every=1",
        "sample_every=0",
        "checkpoint_every=0",
        "rank=4",
        "lr=1e-2",
    ]
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert [r["step"] for r in _log(out) if "reward" in r] == [1, 2]
