"""A synthetic learnable task: the ICT and HP stages lift pairwise accuracy far above chance (measured by the
evaluation command), and the exported models load in the scorer with the trained model's scores."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from icthp_cli.main import main as icthp_main
from icthp_core import load_scorer
from icthp_core.checkpoints.loading import load_clip
from icthp_core.data.datasets import load_triplets
from icthp_core.data.preprocess import preprocess_pil
from icthp_core.scoring.models import HPHead, HPModel, ICTModel
from tests.core.training.conftest import common_overrides, train_hp_main, train_ict_main

pytestmark = [pytest.mark.slow]

HP_SEED = 5  # a head whose random initial direction ranks the triplets backwards (accuracy ~0)


@pytest.fixture(scope="module")
def trained(tiny_base, synth, tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    ict_sum = train_ict_main(
        common_overrides(tiny_base, synth["train"], root / "ict", max_steps=100, val_data=synth["val"])
    )
    hp_opts = {"val_data": synth["val"], "head_dims": "[32,16,8,4]", "seed": HP_SEED}
    # the untrained baseline: one step at a negligible learning rate (a run needs max_steps >= 1)
    train_hp_main(common_overrides(tiny_base, synth["train"], root / "hp0", max_steps=1, lr=1e-12, **hp_opts))
    hp_sum = train_hp_main(
        common_overrides(
            tiny_base, synth["train"], root / "hp", max_steps=100, ict_model=root / "ict" / "ICT", **hp_opts
        )
    )
    return root, ict_sum, hp_sum


def _eval(tmp_path, data, *args):
    out = tmp_path / "res.json"
    rc = icthp_main(["eval", "--data", str(data), "--workers", "0", "--device", "cpu", "-o", str(out), *args])
    assert rc == 0
    return json.loads(out.read_text())


def test_training_lifts_accuracy_above_chance(trained, tiny_base, synth, tmp_path, capsys):
    root, ict_sum, hp_sum = trained
    base = _eval(tmp_path, synth["val"], "--metrics", "clip", "--source", f"clip={tiny_base}")
    res = _eval(tmp_path, synth["val"], "--ict", str(root / "ict" / "ICT"), "--hp", str(root / "hp" / "HP"))
    table = capsys.readouterr().out
    assert "ICT-HP" in table and "I3>I2" in table and "Random" in table
    hp0 = _eval(tmp_path, synth["val"], "--ict", "none", "--hp", str(root / "hp0" / "HP"))
    before = {"ict": base["results"]["clip"]["avg"], "hp": hp0["results"]["hp"]["avg"]}
    before["ict_hp"] = max(before.values())
    print("untrained", before, "trained", {m: r["avg"] for m, r in res["results"].items()})
    assert before["ict"] < 0.7 and before["hp"] < 0.3  # the untrained models do not solve the task
    for m in ("ict", "hp", "ict_hp"):
        r = res["results"][m]
        assert r["n"] == 32
        assert r["avg"] >= 0.85 and min(r["I2>I1"], r["I3>I2"], r["I3>I1"]) >= 0.75, (m, r)
        assert r["avg"] > before[m] + 0.15
    # the in-training validation agrees with the evaluation command on the same data
    assert ict_sum["val"]["avg"] == pytest.approx(res["results"]["ict"]["avg"])
    assert hp_sum["val"]["avg"] == pytest.approx(res["results"]["hp"]["avg"])
    assert hp_sum["val"]["ict_hp/avg"] == pytest.approx(res["results"]["ict_hp"]["avg"])
    for stage in ("ict", "hp"):
        assert (root / stage / "curves.png").stat().st_size > 1000
        lines = (root / stage / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(x)["train/loss"] for x in lines if "train/loss" in x]
        assert losses[-1] < losses[0]


def _pickapic_parquet(pairs_jsonl, out):
    """The synthetic pairs as a Pick-a-Pic v2 style parquet: caption, jpg_0/jpg_1 bytes, label_0/label_1."""
    import pandas as pd

    rows = [json.loads(x) for x in pairs_jsonl.read_text().splitlines()]
    df = pd.DataFrame(
        {
            "caption": [r["prompt"] for r in rows],
            "jpg_0": [(pairs_jsonl.parent / r["image_0"]).read_bytes() for r in rows],
            "jpg_1": [(pairs_jsonl.parent / r["image_1"]).read_bytes() for r in rows],
            "label_0": [r["label_0"] for r in rows],
            "label_1": [1 - r["label_0"] for r in rows],
        }
    )
    df.to_parquet(out)
    return out


def test_tie_aware_protocol_on_pairs(trained, synth, tmp_path):
    root = trained[0]
    res = _eval(
        tmp_path,
        _pickapic_parquet(synth["val_pairs"], tmp_path / "test.parquet"),
        "--val-data",
        str(synth["train_pairs"]),
        "--ict",
        "none",
        "--hp",
        str(root / "hp" / "HP"),
        "--tie-grid",
        "relative",
    )
    r = res["results"]["hp"]
    assert res["kind"] == "pairs" and r["threshold_from"] == "val-data" and r["n_ties"] > 0
    assert r["accuracy_no_ties"] >= 0.8 and r["tie_aware"] >= 0.7


def _checkpoint_state(run_dir, prefix):
    ckpts = sorted((run_dir / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    sd = load_file(str(ckpts[-1] / "model.safetensors"))
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def test_exported_models_match_trained_weights_in_scorer(trained, tiny_base, synth):
    """Scores of the exported (HF-layout) models via load_scorer == scores of the trained open_clip modules
    rebuilt from the accelerate checkpoint."""
    root = trained[0]
    ict = ICTModel(load_clip(tiny_base))
    ict.clip.load_state_dict(_checkpoint_state(root / "ict", "ict.clip."))
    visual = load_clip(tiny_base, vision_only=True)
    visual.load_state_dict(_checkpoint_state(root / "hp", "hp.visual."))
    head_sd = _checkpoint_state(root / "hp", "hp.head.")
    hp = HPModel(visual, HPHead.from_state_dict(head_sd)).eval()
    recs, _ = load_triplets(synth["val"])
    paths = [r.images[k] for r in recs[:6] for k in range(3)]
    prompts = [r.easy_prompt for r in recs[:6] for _ in range(3)]
    from icthp_core.data.datasets import open_image
    from icthp_core.scoring.text import tokenize

    px = torch.stack([preprocess_pil(open_image(p)) for p in paths])
    with torch.no_grad():
        want_ict = ict(px, tokenize(prompts))
        want_hp = hp(px)
    got = load_scorer(ict=root / "ict" / "ICT", hp=root / "hp" / "HP", device="cpu").score(paths, prompts)
    torch.testing.assert_close(got["ict"], want_ict, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["hp"], want_hp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["ict_hp"], want_ict * want_hp, atol=1e-5, rtol=1e-5)
    # the exported model is the trained one, not the base
    base = ICTModel(load_clip(tiny_base))
    with torch.no_grad():
        assert not torch.allclose(base(px, tokenize(prompts)), want_ict, atol=1e-3)


def test_hp_stage_trains_on_preference_pairs(trained, tiny_base, synth, tmp_path):
    """HP on the user's own pairs (winner > loser, ties skipped) instead of triplets."""
    root = trained[0]
    out = tmp_path / "hp_pairs"
    summary = train_hp_main(
        common_overrides(
            tiny_base,
            synth["train_pairs"],
            out,
            max_steps=60,
            val_data=synth["val_pairs"],
            head_dims="[32,16,8,4]",
            seed=HP_SEED,
        )
    )
    before = _eval(tmp_path, synth["val_pairs"], "--ict", "none", "--hp", str(root / "hp0" / "HP"))["results"]["hp"]
    after = _eval(tmp_path, synth["val_pairs"], "--ict", "none", "--hp", str(out / "HP"))["results"]["hp"]
    assert before["accuracy_no_ties"] < 0.3
    assert after["accuracy_no_ties"] >= 0.85
    assert summary["val"]["pairs_no_ties"] == pytest.approx(after["accuracy_no_ties"])
