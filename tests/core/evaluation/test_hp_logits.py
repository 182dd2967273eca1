"""HP raw logits beside the probabilities (`hp_logit`), and no triplet dropped silently in eval.

Reference: the HP head applied by hand (torch Linear layers of the saved head file) to the backbone's features;
the upstream trainer compares softmax over the triplet of those raw logits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import jobproc
import numpy as np
import pytest
import torch

from icthp_core.checkpoints.files import load_state_dict, save_state_dict
from icthp_core.data.datasets import load_triplets
from icthp_core.evaluation.preference import evaluate_triplets, format_table, markdown_table, protocol_metrics
from icthp_core.scoring.scorer import MultiScorer
from icthp_core.testing.synthetic import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synth"), triplets=8, pairs=2)


@pytest.fixture(scope="module")
def saturated_hp(tiny_hp, tmp_path_factory):
    """The tiny HP with its last layer scaled and shifted: logits ~ +60 (distinct), sigmoid exactly 1.0 in float32."""
    d = tmp_path_factory.mktemp("sat") / "HP"
    shutil.copytree(tiny_hp, d)
    f = d / "hp_scorer" / "mlp_pytorch_model.bin"
    sd = {k: v.clone() for k, v in load_state_dict(f).items()}  # the file may be memory-mapped: copy, then replace
    f.unlink()
    sd["layers.7.weight"] = sd["layers.7.weight"] * 100
    sd["layers.7.bias"] = sd["layers.7.bias"] + 60
    save_state_dict(sd, f)
    return d


def _by_hand(hp_dir, pixels):
    """Raw head output: the five Linear layers applied one after the other (no sigmoid)."""
    model = MultiScorer(["hp"], {"hp": str(hp_dir)}, device="cpu").models["hp"]
    sd = load_state_dict(hp_dir / "hp_scorer" / "mlp_pytorch_model.bin")
    with torch.no_grad():
        x = model.encode_image(pixels).double()
        for i in (0, 2, 4, 6, 7):
            x = x @ sd[f"layers.{i}.weight"].double().T + sd[f"layers.{i}.bias"].double()
    return x.squeeze(-1)


def test_hp_logit_is_the_raw_head_output_on_the_same_instance(saturated_hp, data):
    scorer = MultiScorer(["hp", "hp_logit"], {"hp": str(saturated_hp)}, device="cpu")
    assert scorer.models["hp"] is scorer.models["hp_logit"]  # one HP model, the --hp weights
    records, _ = load_triplets(data["triplets"])
    images = [str(records[0].images[k]) for k in range(3)]
    pixels = scorer.preprocess(images)["crop"]
    got = scorer.score_pixels({"crop": pixels}, None)
    want = _by_hand(saturated_hp, pixels)
    torch.testing.assert_close(got["hp_logit"].double(), want, rtol=1e-4, atol=1e-3)
    assert (got["hp"] == 1.0).all() and want.min() > 20  # the float32 sigmoid saturates; the logits do not
    assert len(set(got["hp_logit"].tolist())) == 3


@pytest.mark.slow
def test_upstream_protocol_keeps_saturated_triplets(saturated_hp, tiny_ict, data):
    records, _ = load_triplets(data["triplets"])
    metrics = protocol_metrics(["ict_hp"], "upstream")
    assert metrics == ["ict", "ict_hp", "hp_logit"]
    scorer = MultiScorer(metrics, {"ict": str(tiny_ict), "hp": str(saturated_hp)}, device="cpu")
    res = evaluate_triplets(scorer, records, "upstream", workers=0, n_boot=0)
    row = res["results"]["ict_hp"]
    assert row["n"] == len(records) and row["dropped"] == [] and res["dropped"] == {}
    # reference: ICT x softmax over the triplet of the hand-computed logits, strict comparisons
    ict = np.array([[it[f"ict_I{k}"] for k in (1, 2, 3)] for it in res["items"]])
    logits = np.stack(
        [_by_hand(saturated_hp, scorer.preprocess([str(x) for x in r.images])["crop"]).numpy() for r in records]
    )
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    q = ict * e / e.sum(axis=1, keepdims=True)
    want = np.mean([(q[:, 1] > q[:, 0]).mean(), (q[:, 2] > q[:, 1]).mean(), (q[:, 2] > q[:, 0]).mean()])
    assert row["avg"] == pytest.approx(want)
    # the old path (logits recovered from the saturated sigmoid) loses them, and now says so
    old = MultiScorer(["ict", "hp", "ict_hp"], {"ict": str(tiny_ict), "hp": str(saturated_hp)}, device="cpu")
    res_old = evaluate_triplets(old, records, "upstream", workers=0, n_boot=0)
    lost = res_old["results"]["ict_hp"]["dropped"]
    assert lost == list(range(len(records))) and res_old["dropped"]["ict_hp"] == lost
    text = format_table(res_old)
    assert f"ICT-HP: {len(records)} triplet(s) dropped" in text and "0, 1, 2" in text
    assert "| dropped |" in markdown_table(res_old) and "ICT-HP: 8 triplet(s) dropped" in markdown_table(res_old)


def test_unreadable_image_is_named(tiny_hp, data, tmp_path):
    records, _ = load_triplets(data["triplets"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    r = records[1]
    records = [records[0], type(r)(r.easy_prompt, r.refine_prompt, [r.images[0], str(bad), r.images[2]], r.labels)]
    scorer = MultiScorer(["hp"], {"hp": str(tiny_hp)}, device="cpu")
    res = evaluate_triplets(scorer, records, "paper", workers=0, n_boot=0)
    assert res["results"]["hp"]["dropped"] == [1] and res["results"]["hp"]["n"] == 1
    assert "HP: 1 triplet(s) dropped" in format_table(res)


def _icthp(*args: str) -> subprocess.CompletedProcess:
    """`icthp ARGS` as a user runs it (its own process, tests/jobproc.py; offline)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return jobproc.run(args, env=env, timeout=600)


@pytest.mark.slow
def test_cli_upstream_protocol_ties_and_bf16(saturated_hp, tiny_ict, data, tmp_path):
    base = ["eval", "--data", str(data["triplets"]), "--ict", str(tiny_ict), "--hp", str(saturated_hp)]
    base += ["--workers", "0", "--device", "cpu", "--bootstrap", "0"]
    out, scores = tmp_path / "up.json", tmp_path / "up.jsonl"
    r = _icthp(*base, "--protocol", "upstream", "-o", str(out), "--scores-out", str(scores))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["results"]["ict_hp"]["n"] == 8 and res["dropped"] == {}  # the saturated HP loses no triplet
    assert "dropped" in r.stdout.splitlines()[1] and "hp_logit" not in res["results"]  # hp row shown, not twice
    items = [json.loads(x) for x in scores.read_text().splitlines()]
    assert all(it["hp_I1"] == 1.0 and it["hp_logit_I1"] > 20 for it in items)

    # --dtype bf16: each compared value is a bf16 number; reference: torch's bf16 arithmetic on the saved scores
    out16, scores16 = tmp_path / "bf16.json", tmp_path / "bf16.jsonl"
    r = _icthp(*base, "--protocol", "upstream", "--dtype", "bf16", "-o", str(out16), "--scores-out", str(scores16))
    assert r.returncode == 0, r.stderr[-2000:]
    res16 = json.loads(out16.read_text())
    items16 = [json.loads(x) for x in scores16.read_text().splitlines()]
    ict = torch.tensor([[it[f"ict_I{k}"] for k in (1, 2, 3)] for it in items16]).bfloat16()
    logit = torch.tensor([[it[f"hp_logit_I{k}"] for k in (1, 2, 3)] for it in items16]).bfloat16()
    q = ict * torch.softmax(logit, dim=-1)  # bf16 tensors: a bf16 product of bf16 values
    want = torch.stack([q[:, 1] > q[:, 0], q[:, 2] > q[:, 1], q[:, 2] > q[:, 0]]).double().mean().item()
    assert res16["precision"] == "bf16" and res16["results"]["ict_hp"]["avg"] == pytest.approx(want)

    # --ties: the paper protocol counts an equal pair 0 by default, 1/2 with --ties half
    paper = _icthp(*base, "--protocol", "paper", "--metrics", "hp", "-o", str(tmp_path / "p.json"))
    half = _icthp(*base, "--protocol", "paper", "--metrics", "hp", "--ties", "half", "-o", str(tmp_path / "h.json"))
    assert paper.returncode == half.returncode == 0, paper.stderr[-2000:] + half.stderr[-2000:]
    p, h = json.loads((tmp_path / "p.json").read_text()), json.loads((tmp_path / "h.json").read_text())
    assert (p["ties"], p["tie_credit"], h["ties"], h["tie_credit"]) == ("zero", 0.0, "half", 0.5)
    # HP is exactly 1.0 for every image: every pair ties -> 0 with ties zero, 1/2 with ties half
    assert p["results"]["hp"]["avg"] == 0.0 and h["results"]["hp"]["avg"] == 0.5
    bad = _icthp(*base, "--ties", "third")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
