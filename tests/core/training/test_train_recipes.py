"""The paper and upstream recipes: freezing sets, LR curve, HP-stage loss, best-checkpoint selection, gathering."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from live import free_port

from icthp_cli.options import cli_config
from icthp_core.checkpoints.convert import hf_to_open_clip
from icthp_core.checkpoints.loading import load_clip
from icthp_core.testing.tiny import tiny_hf_clip
from icthp_core.training import engine
from icthp_core.training.checkpointing import BestTracker, best_step
from icthp_core.training.hp import HPConfig, freeze_first_half, freeze_upstream
from icthp_core.training.ict import ICTConfig
from icthp_core.training.losses import hp_stage_loss, icthp_margin_loss
from tests.core.training.conftest import REPO, common_overrides, train_hp_main, train_ict_main


def _upstream_set_grad_with_rate(model, fix_rate):
    """BarretBa/ICTHP `icthp_model.py::set_grad_with_rate`, restated on a transformers CLIPModel (the reference)."""
    for layer in [*model.text_model.encoder.layers, model.text_model.final_layer_norm]:
        layer.requires_grad_(False)
    image_layers = [*model.vision_model.encoder.layers, model.vision_model.post_layernorm]
    fix = int(len(image_layers) * fix_rate)
    for i, layer in enumerate(image_layers):
        layer.requires_grad_(i >= fix)
    model.text_projection.requires_grad_(False)
    model.visual_projection.requires_grad_(False)


def _paper_rule_hf(model, fraction):
    """The paper's rule (first half of the vision tower frozen, the stem with it) on a transformers CLIPModel."""
    model.requires_grad_(True)
    layers = model.vision_model.encoder.layers
    model.vision_model.embeddings.requires_grad_(False)
    model.vision_model.pre_layrnorm.requires_grad_(False)
    for layer in layers[: int(len(layers) * fraction)]:
        layer.requires_grad_(False)


def _trainable_open_clip_names(hf, rule) -> set[str]:
    rule(hf, 0.5)
    sd = {n: p for n, p in hf.named_parameters() if p.requires_grad and n.startswith(("vision_model", "visual_proj"))}
    converted, unknown = hf_to_open_clip(sd)
    assert not unknown
    return {k.removeprefix("visual.") for k in converted}


@pytest.mark.parametrize(
    ("ours", "reference"), [(freeze_upstream, _upstream_set_grad_with_rate), (freeze_first_half, _paper_rule_hf)]
)
def test_trainable_parameters_follow_the_recipe_rule(ours, reference, tiny_base):
    visual = load_clip(tiny_base, vision_only=True)
    ours(visual, 0.5)
    got = {n for n, p in visual.named_parameters() if p.requires_grad}
    assert got == _trainable_open_clip_names(tiny_hf_clip(seed=0), reference)
    if ours is freeze_upstream:  # 2 blocks + post-LN: int(3 * 0.5) = 1 frozen layer (CLIP-H: blocks 0-15)
        assert "proj" not in got and "conv1.weight" in got and "ln_pre.weight" in got
        assert not any(n.startswith("transformer.resblocks.0.") for n in got) and "ln_post.weight" in got


def test_upstream_rule_on_clip_h_depth():
    """With CLIP-H's 32 blocks the upstream rule freezes blocks 0-15 (int(33 * 0.5) = 16) and the projection."""
    from open_clip.transformer import VisionTransformer

    v = VisionTransformer(image_size=32, patch_size=16, width=8, layers=32, heads=2, mlp_ratio=1.0, output_dim=4)
    assert freeze_upstream(v, 0.5) == 16
    frozen_blocks = [
        i for i, b in enumerate(v.transformer.resblocks) if not any(p.requires_grad for p in b.parameters())
    ]
    assert frozen_blocks == list(range(16)) and not v.proj.requires_grad
    assert v.ln_post.weight.requires_grad and v.ln_pre.weight.requires_grad and v.conv1.weight.requires_grad
    assert freeze_upstream(v, 0.0) == 32 and not any(p.requires_grad for p in v.parameters())  # as upstream


def test_log_warmup_linear_decay_matches_closed_form():
    cfg = HPConfig(recipe="upstream", warmup_steps=500, warmup_type="log", lr_schedule="linear", max_steps=5000)
    f = engine.lr_lambda(cfg)

    def deepspeed_warmup_decay(s, w=500, t=5000):  # DeepSpeed WarmupDecayLR, warmup_type="log"
        return math.log(s + 1) / math.log(w) if s < w else max(0.0, (t - s) / (t - w))

    for s in (0, 1, 9, 99, 250, 499, 500, 501, 2750, 4999, 5000, 5100):
        assert f(s) == pytest.approx(deepspeed_warmup_decay(s), abs=1e-12), s
    assert f(0) == 0 and f(499) == pytest.approx(math.log(500) / math.log(500)) and f(2750) == 0.5 and f(5000) == 0
    # the engine's scheduler: the LR used at optimizer step s is peak * f(s)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=3e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    seen = []
    for _ in range(600):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[10] == pytest.approx(3e-6 * math.log(11) / math.log(500)) and seen[550] == pytest.approx(
        3e-6 * 4450 / 4500
    )


def test_hp_stage_loss_with_icthp_term_hand_value():
    hp = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.5]])
    ict = torch.tensor([[0.2, 0.5, 0.9], [0.8, 0.6, 0.7]])
    m = 0.3
    # HP term: batch mean of each hinge. Row 0: (0.3-1)+ = 0, (0.3-1)+ = 0; row 1: (0.3+1) = 1.3, (0.3-0.5)+ = 0
    hp_term = (0 + 1.3) / 2 + (0 + 0) / 2
    # ICT-HP term: q = ict * softmax(hp) per row, hinges summed over the batch
    q = []
    for h, i in zip(hp.tolist(), ict.tolist(), strict=True):
        e = [math.exp(x) for x in h]
        q.append([i[k] * e[k] / sum(e) for k in range(3)])
    icthp = sum(max(0.0, m - (r[1] - r[0])) + max(0.0, m - (r[2] - r[1])) for r in q)
    total, hp_t, icthp_t = hp_stage_loss(hp, m, ict, hp_weight=1.0, icthp_weight=1.0)
    assert hp_t.item() == pytest.approx(hp_term) and icthp_t.item() == pytest.approx(icthp)
    assert total.item() == pytest.approx(hp_term + icthp)
    # and against torch's margin_ranking_loss, as upstream computes it
    qs = ict * torch.softmax(hp, -1)
    one = torch.ones(2)
    ref = (
        F.margin_ranking_loss(qs[:, 1], qs[:, 0], one, margin=m, reduction="none").sum()
        + F.margin_ranking_loss(qs[:, 2], qs[:, 1], one, margin=m, reduction="none").sum()
    )
    assert icthp_margin_loss(ict, hp, m).item() == pytest.approx(ref.item())
    paper, _, none = hp_stage_loss(hp, 0.2)
    assert none is None and paper.item() == pytest.approx((1.2 + 0) / 2)
    with pytest.raises(ValueError, match="ict_model"):
        hp_stage_loss(hp, m, None, icthp_weight=1.0)


def test_best_step_selection():
    hist = [(2, 0.5), (4, 0.75), (6, float("nan")), (8, 0.75), (10, 0.6)]
    assert best_step(hist, "max") == (4, 0.75)  # the earliest of equal values
    assert best_step(hist, "min") == (2, 0.5)
    t = BestTracker("acc", "max")
    assert [t.update(s, {"acc": v}) for s, v in hist] == [True, True, False, False, False]
    assert (t.step, t.value) == (4, 0.75)
    t2 = BestTracker("acc")
    t2.load_state_dict(t.state_dict())  # survives a resume
    assert not t2.update(12, {"acc": 0.7}) and t2.update(14, {"acc": 0.8}) and t2.step == 14
    with pytest.raises(ValueError, match="best_metric"):
        BestTracker("nope").update(1, {"acc": 1.0})


@pytest.mark.slow
def test_upstream_hp_run_exports_best_of_the_candidate_steps(tiny_base, tiny_ict, synth, tmp_path):
    """Upstream HP saves candidates only at multiples of 5000 and at the end (`train_hp.py`); here every 4 of 7
    steps, validation every 3: steps 3, 4, 6, 7 are validated (4 although 3 does not divide it), only 4 and 7 may
    be exported."""
    assert cli_config(HPConfig, None, ["recipe=upstream"]).export_candidates_every == 5000
    extra = dict(recipe="upstream", ict_model=tiny_ict, val_data=synth["val"], max_steps=7, eval_every=3)
    extra.update(warmup_steps=3, export_candidates_every=4, head_dims="[32,16,8,4]")
    summary = train_hp_main(common_overrides(tiny_base, synth["train"], tmp_path, **extra))
    series = engine.read_metrics(tmp_path / "metrics.jsonl")
    acc = series["val/ict_hp_upstream/accuracy"]
    assert [s for s, _ in acc] == [3, 4, 6, 7]
    assert "train/icthp_loss" in series and "train/hp_loss" in series
    best = json.loads((tmp_path / "best.json").read_text())
    want = best_step([(s, v) for s, v in acc if s in (4, 7)], "max")
    assert (best["step"], best["value"]) == want == (summary["best"]["step"], summary["best"]["value"])
    assert (tmp_path / "HP" / "hp_scorer").is_dir() and (tmp_path / "HP_last" / "hp_scorer").is_dir()
    cfg = json.loads((tmp_path / "hp_config.json").read_text())
    assert (cfg["margin"], cfg["weight_decay"], cfg["freeze_rule"], cfg["icthp_loss_weight"]) == (
        0.3, 0.01, "upstream", 1.0
    )  # fmt: skip
    assert (cfg["icthp_term_reduction"], cfg["reference_world_batch"]) == ("sum", 256)


def test_ict_recipes_resolve():
    paper = cli_config(ICTConfig, None, ["recipe=paper"])
    up = cli_config(ICTConfig, None, ["recipe=upstream"])
    assert (paper.lr, paper.lam, paper.max_steps, paper.weight_decay) == (3e-5, 0.1, 40000, 0.0)
    assert (up.lr, up.lam, up.max_steps, up.weight_decay, up.warmup_type) == (3e-6, 0.5, 5000, 0.01, "log")
    # upstream ships the final step (train_ict.py keeps a full state only at the end); best-val is an option
    assert up.best_metric is None and paper.best_metric is None
    assert cli_config(ICTConfig, None, ["recipe=paper", "best_metric=avg"]).best_metric == "avg"


@pytest.mark.slow
def test_upstream_ict_run_exports_the_final_step(tiny_base, synth, tmp_path):
    extra = dict(recipe="upstream", val_data=synth["val"], max_steps=4, eval_every=2, warmup_steps=2, limit_val=8)
    summary = train_ict_main(common_overrides(tiny_base, synth["train"], tmp_path, **extra))
    assert summary["best"] is None and not (tmp_path / "best.json").exists() and not (tmp_path / "ICT_last").exists()
    assert summary["exported"] == str(tmp_path / "ICT") and summary["steps"] == 4


def test_icthp_term_scaling_arithmetic():
    """ICT = 0 makes q = 0, so every triplet's hinges are m + m = 0.6: the summed term is 0.6 B."""
    m = 0.3
    for b in (32, 64, 256):
        ict, logits = torch.zeros(b, 3), torch.randn(b, 3, generator=torch.Generator().manual_seed(b))
        assert icthp_margin_loss(ict, logits, m).item() == pytest.approx(0.6 * b)  # upstream: grows with B
        # scaled to upstream's 8 GPUs x 32: what 256 triplets sum to, on any world batch
        assert icthp_margin_loss(ict, logits, m, "sum", 256).item() == pytest.approx(0.6 * 256)
        assert icthp_margin_loss(ict, logits, m, "mean").item() == pytest.approx(0.6)
    # on general values: sum scaled by R / B = R x mean; identical to the plain sum at B = R
    g = torch.Generator().manual_seed(0)
    ict, logits = torch.rand(32, 3, generator=g), torch.randn(32, 3, generator=g)
    plain = icthp_margin_loss(ict, logits, m)
    assert icthp_margin_loss(ict, logits, m, "sum", 256).item() == pytest.approx(8 * plain.item())
    assert icthp_margin_loss(ict, logits, m, "sum", 32).item() == pytest.approx(plain.item())
    total, _, term = hp_stage_loss(logits, m, ict, 1.0, 1.0, "sum", 256)
    assert term.item() == pytest.approx(8 * plain.item())
    with pytest.raises(ValueError, match="'sum' or 'mean'"):
        icthp_margin_loss(ict, logits, m, "max")
    up = cli_config(HPConfig, None, ["recipe=upstream"])
    assert (up.icthp_term_reduction, up.reference_world_batch) == ("sum", 256)


_GATHER_WORKER = r"""
import json, os, sys, torch, torch.distributed as dist
from icthp_core.training.losses import gather_batch
from icthp_core.training.losses import hp_stage_loss
dist.init_process_group("gloo")
r = dist.get_rank()
g = torch.Generator().manual_seed(0)
hp_all, ict_all = torch.randn(6, 3, generator=g), torch.rand(6, 3, generator=g)
hp = hp_all[3 * r : 3 * r + 3].clone().requires_grad_(True)
h, i = gather_batch(hp, ict_all[3 * r : 3 * r + 3])
loss, _, _ = hp_stage_loss(h, 0.3, i, 1.0, 1.0)
loss.backward()
if r == 0:
    with open(sys.argv[1], "w") as f:
        json.dump({"loss": loss.item(), "grad0": hp.grad.tolist()}, f)
dist.barrier()  # both ranks are done with the collectives before the group goes (else gloo can abort at exit)
dist.destroy_process_group()
"""


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_process_gloo_gathering_gives_the_one_process_loss(tmp_path):
    port = str(free_port())
    script = tmp_path / "w.py"
    script.write_text(_GATHER_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    res = subprocess.run([*cmd, str(script), str(tmp_path / "r.json")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads((tmp_path / "r.json").read_text())
    g = torch.Generator().manual_seed(0)
    hp_all, ict_all = torch.randn(6, 3, generator=g), torch.rand(6, 3, generator=g)
    hp_all.requires_grad_(True)
    loss, _, _ = hp_stage_loss(hp_all, 0.3, ict_all, 1.0, 1.0)
    loss.backward()
    assert got["loss"] == pytest.approx(loss.item(), rel=1e-6)
    # rank 0's local gradient (through the differentiable all_gather, before DDP's mean over 2 ranks) = 2x its rows
    torch.testing.assert_close(torch.tensor(got["grad0"]) / 2, hp_all.grad[:3])
