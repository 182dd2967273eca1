"""Engine pieces: configs, freezing, head init, automatic ICT labels (checked against transformers), CLIs."""

from __future__ import annotations

import json

import pytest
import torch

from icthp_cli.main import main as icthp_main
from icthp_cli.options import cli_config, config_from_argv
from icthp_core.checkpoints.loading import load_clip
from icthp_core.data.datasets import load_triplets, open_image
from icthp_core.data.preprocess import preprocess_pil
from icthp_core.scoring.text import tokenize
from icthp_core.training import engine
from icthp_core.training.hp import HPConfig, freeze_first_half, new_head
from icthp_core.training.ict import ICTConfig
from icthp_core.training.labels import auto_theta, ict_labels
from tests.core.training.conftest import REPO, common_overrides, train_hp_main, train_ict_main

pytestmark = [pytest.mark.slow]


def test_yaml_configs_load_with_overrides(tmp_path):
    ict = cli_config(ICTConfig, REPO / "train" / "configs" / "ict_paper.yaml", ["lr=1e-4", "max_steps=7"])
    assert ict.lr == 1e-4 and ict.max_steps == 7 and ict.lam == 0.1 and ict.alpha == 20 and ict.beta == 6
    assert ict.mixed_precision == "bf16" and ict.gradient_checkpointing and ict.theta is None
    hp = cli_config(HPConfig, REPO / "train" / "configs" / "hp_paper.yaml", ["head_dims=[8,8,4,4]"])
    assert hp.lr == 3e-6 and hp.margin == 0.2 and hp.freeze_fraction == 0.5 and hp.head_dims == (8, 8, 4, 4)
    up = cli_config(HPConfig, REPO / "train" / "configs" / "hp_upstream.yaml", ["margin=0.25"])
    assert (up.recipe, up.margin, up.weight_decay, up.warmup_type, up.lr_schedule) == (
        "upstream",
        0.25,
        0.01,
        "log",
        "linear",
    )  # the recipe fills its values; an explicit key wins
    assert up.icthp_loss_weight == 1.0 and up.freeze_rule == "upstream" and up.best_metric.startswith("ict_hp_up")
    ict_up = cli_config(ICTConfig, REPO / "train" / "configs" / "ict_upstream.yaml")
    assert (ict_up.lr, ict_up.max_steps, ict_up.lam, ict_up.weight_decay) == (3e-6, 5000, 0.5, 0.01)
    with pytest.raises(ValueError, match="recipe='nope'"):
        cli_config(ICTConfig, None, ["recipe=nope"])
    assert cli_config(ICTConfig, None, ["mixed_precision=no"]).mixed_precision == "no"  # not YAML's False
    with pytest.raises(ValueError, match="key=value"):
        config_from_argv(ICTConfig, ["--max_steps", "3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 1e-3\nlearning_rate: 3\n")
    with pytest.raises(ValueError, match="learning_rate"):
        cli_config(ICTConfig, bad)
    with pytest.raises(ValueError, match="max_steps"):
        cli_config(ICTConfig, None, ["max_steps=abc"])
    json.loads((REPO / "train" / "configs" / "ds_zero2.json").read_text())


def test_warmup_schedule():
    f = engine.lr_lambda(ICTConfig(warmup_steps=4, max_steps=10, lr_schedule="linear"))
    assert [f(s) for s in (0, 3, 4)] == [0.25, 1.0, 1.0] and f(10) == 0.0


def test_freeze_first_half(tiny_base):
    v = load_clip(tiny_base, vision_only=True)
    assert freeze_first_half(v, 0.5) == 1
    trainable = {n for n, p in v.named_parameters() if p.requires_grad}
    assert all(n.startswith(("transformer.resblocks.1.", "ln_post", "proj")) for n in trainable)
    assert any(n.startswith("transformer.resblocks.1.") for n in trainable) and "proj" in trainable
    assert not any(p.requires_grad for p in v.conv1.parameters()) and not v.positional_embedding.requires_grad
    assert freeze_first_half(v, 0.0) == 0 and all(p.requires_grad for p in v.parameters())


def test_new_head_init():
    h = new_head(16, (32, 16, 8, 4), seed=3)
    assert h.layers[0].weight.shape == (32, 16) and h.layers[-1].weight.shape == (1, 4)
    assert torch.all(h.layers[0].bias == 0)
    assert abs(h.layers[0].weight.std().item() - 1 / 17) < 0.02
    with pytest.raises(ValueError, match="head_dims"):
        new_head(16, (32, 8), seed=0)


def test_auto_labels_match_transformers(tiny_base, synth, tmp_path):
    """Unlabelled triplets: train_ict builds labels with the base CLIP; check them with transformers."""
    from transformers import CLIPModel

    recs, _ = load_triplets(synth["val"])
    rows = [
        {
            "easy_prompt": r.easy_prompt,
            "refine_prompt": r.refine_prompt,
            "image_1": r.images[0],
            "image_2": r.images[1],
            "image_3": r.images[2],
        }
        for r in recs[:16]
    ]
    data = tmp_path / "unlabelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    train_ict_main(common_overrides(tiny_base, data, out, max_steps=1, theta_percentile=50, plot=False))
    meta = json.loads((out / "labels" / "labels_meta.json").read_text())
    labelled, _ = load_triplets(out / "labels" / "train_labeled.jsonl", require_labels=True)

    hf = CLIPModel.from_pretrained(tiny_base).eval()
    with torch.no_grad():

        def img(k):
            px = torch.stack([preprocess_pil(open_image(r[f"image_{k}"])) for r in rows])
            return torch.nn.functional.normalize(hf.get_image_features(pixel_values=px).pooler_output, dim=-1)

        def txt(key):
            ids = tokenize([r[key] for r in rows])
            return torch.nn.functional.normalize(hf.get_text_features(input_ids=ids).pooler_output, dim=-1)

        te, tr = txt("easy_prompt"), txt("refine_prompt")
        s1, s2, s3 = ((img(k) * te).sum(-1) for k in (1, 2, 3))
        ser = (te * tr).sum(-1)
    theta = auto_theta(s3, 50)
    assert meta["theta"] == pytest.approx(theta, rel=1e-4)
    want = ict_labels(s1, s2, ser, theta)
    for k in ("E1", "E2", "R1", "R2"):
        got = torch.tensor([r.labels[k] for r in labelled])
        torch.testing.assert_close(got, getattr(want, k), atol=1e-4, rtol=1e-4)

    # a later run with other label settings rebuilds them (stale labels are never reused)
    train_ict_main(common_overrides(tiny_base, data, out, max_steps=1, theta=0.05, plot=False, resume=None))
    assert json.loads((out / "labels" / "labels_meta.json").read_text())["theta"] == 0.05
    relabelled, _ = load_triplets(out / "labels" / "train_labeled.jsonl", require_labels=True)
    want = ict_labels(s1, s2, ser, 0.05)
    torch.testing.assert_close(torch.tensor([r.labels["E1"] for r in relabelled]), want.E1, atol=1e-4, rtol=1e-4)


def test_convert_cli_refuses_without_trust(tmp_path, capsys):
    assert icthp_main(["convert-pick-high", str(tmp_path), "-o", str(tmp_path / "out")]) == 0  # no splits: nothing
    (tmp_path / "Pick-High").mkdir()
    torch.save({"not": "a frame"}, tmp_path / "Pick-High" / "val.pkl")
    assert icthp_main(["convert-pick-high", str(tmp_path), "-o", str(tmp_path / "out"), "--splits", "val"]) == 2
    assert "trust" in capsys.readouterr().err


def test_eval_cli_errors(synth, tmp_path, capsys):
    assert icthp_main(["eval", "--data", str(synth["val"]), "--metrics", "nope"]) == 2
    assert "unknown" in capsys.readouterr().err
    assert icthp_main(["eval", "--data", str(synth["val"]), "--ict", "none", "--hp", "none"]) == 2  # no model given
    assert "no metric" in capsys.readouterr().err
    pkl = tmp_path / "x.pkl"
    pkl.write_bytes(b"\x80\x04K\x01.")
    assert icthp_main(["eval", "--data", str(pkl), "--ict", "x"]) == 2
    assert "trust" in capsys.readouterr().err


def test_plot_and_metrics_dedup(tmp_path):
    f = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 1, "train/loss": 1.0},
        {"step": 2, "train/loss": 0.9},
        {"step": 2, "train/loss": 0.8},
        {"step": 2, "val/avg": 0.7},
    ]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = engine.read_metrics(f)
    assert s["train/loss"] == [(1, 1.0), (2, 0.8)] and s["val/avg"] == [(2, 0.7)]
    png = engine.plot_metrics(f, tmp_path / "c.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("module", ["ict", "hp"])
def test_bf16_and_gradient_checkpointing_run(module, tiny_base, synth, tmp_path):

    extra = {"max_steps": 2, "mixed_precision": "bf16", "gradient_checkpointing": True, "plot": False}
    if module == "hp":
        extra["head_dims"] = "[32,16,8,4]"
        summary = train_hp_main(common_overrides(tiny_base, synth["train"], tmp_path, **extra))
        exported = tmp_path / "HP" / "hp_backbone" / "model.safetensors"
    else:
        summary = train_ict_main(common_overrides(tiny_base, synth["train"], tmp_path, **extra))
        exported = tmp_path / "ICT" / "model.safetensors"
    assert summary["steps"] == 2
    from safetensors.torch import load_file

    assert all(v.dtype == torch.float32 for v in load_file(str(exported)).values() if v.is_floating_point())
    losses = [
        json.loads(x)["train/loss"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if "train/loss" in x
    ]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_accelerate_launch_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    for name in ("accelerate_ddp.yaml", "accelerate_deepspeed_zero2.yaml", "accelerate_cpu2.yaml"):
        cfg = load_config_from_file(str(REPO / "train" / "configs" / name))
        assert cfg.num_processes in (2, 8), name
    ds = load_config_from_file(str(REPO / "train" / "configs" / "accelerate_deepspeed_zero2.yaml"))
    assert ds.distributed_type == "DEEPSPEED"
    ds_json = json.loads((REPO / "train" / "configs" / "ds_zero2.json").read_text())
    assert ds_json["zero_optimization"]["stage"] == 2
