"""`icthp eval` on tiny models and the synthetic data: both protocols, the Table-1 rows, outputs, bytes images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from icthp_cli.main import main as icthp
from icthp_core.testing.synthetic import make_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synth"), triplets=10, pairs=8)


def _run(tmp_path, *args):
    out = tmp_path / "res.json"
    scores = tmp_path / "scores.jsonl"
    common = ["--workers", "0", "--device", "cpu", "-o", str(out), "--scores-out", str(scores), "--bootstrap", "200"]
    assert icthp(["eval", *args, *common]) == 0
    items = [json.loads(x) for x in scores.read_text().splitlines()]
    return json.loads(out.read_text()), items, out.with_suffix(".md").read_text()


def _strict(s):  # upstream: correct only if strictly greater
    s = np.asarray(s)
    return np.mean([(s[:, 1] > s[:, 0]).mean(), (s[:, 2] > s[:, 1]).mean(), (s[:, 2] > s[:, 0]).mean()])


def test_protocols_on_triplets(data, tiny_ict, tiny_hp, tmp_path, capsys):
    models = ["--ict", str(tiny_ict), "--hp", str(tiny_hp)]
    paper, items, md = _run(tmp_path, "--data", str(data["triplets"]), *models, "--protocol", "paper")
    up, _, _ = _run(tmp_path, "--data", str(data["triplets"]), *models, "--protocol", "upstream")
    ict = np.array([[it[f"ict_I{k}"] for k in (1, 2, 3)] for it in items])
    hp = np.array([[it[f"hp_I{k}"] for k in (1, 2, 3)] for it in items])
    # paper: ICT x HP, ties 1/2 (no ties here); upstream: ICT x softmax over the triplet of the HP logits
    assert paper["results"]["ict_hp"]["avg"] == pytest.approx(_strict(ict * hp))
    odds = hp / (1 - hp)  # softmax of logits = odds / sum of odds
    assert up["results"]["ict_hp"]["avg"] == pytest.approx(_strict(ict * odds / odds.sum(axis=1, keepdims=True)))
    assert up["results"]["ict"]["avg"] == pytest.approx(_strict(ict))
    only, _, _ = _run(
        tmp_path, "--data", str(data["triplets"]), *models, "--protocol", "upstream", "--metrics", "ict_hp"
    )
    assert only["results"]["ict_hp"]["avg"] == up["results"]["ict_hp"]["avg"]  # ICT and HP scored for it
    for res in (paper, up):
        rows = res["results"]
        assert list(rows) == ["ict", "hp", "ict_hp", "random", "ict_groundtruth"]
        assert rows["ict_groundtruth"]["avg"] == 1.0 and rows["random"]["n"] == 10
        lo, hi = rows["ict_hp"]["ci"]["avg"]
        assert lo <= rows["ict_hp"]["avg"] <= hi
    assert paper["protocol"] == "paper" and up["protocol"] == "upstream" and up["tie_credit"] == 0.0
    assert "| ICT-HP |" in md and "| Random |" in md and "Average | I2>I1 | I3>I2 | I3>I1" in md
    out = capsys.readouterr().out
    assert "ICT-groundtruth" in out and "protocol upstream" in out


def test_pairs_with_image_bytes(data, tiny_hp, tmp_path):
    """Pick-a-Pic v2 parquet layout: caption, jpg_0/jpg_1 as encoded bytes, label_0."""
    rows = [json.loads(x) for x in data["pairs"].read_text().splitlines()]
    root = data["pairs"].parent
    df = pd.DataFrame(
        {
            "caption": [r["prompt"] for r in rows],
            "jpg_0": [(root / r["image_0"]).read_bytes() for r in rows],
            "jpg_1": [(root / r["image_1"]).read_bytes() for r in rows],
            "label_0": [r["label_0"] for r in rows],
        }
    )
    df.loc[0, "jpg_1"] = b"not an image"  # one bad image: reported, the rest scored
    pq = tmp_path / "test.parquet"
    df.to_parquet(pq)
    res, items, md = _run(tmp_path, "--data", str(pq), "--ict", "none", "--hp", str(tiny_hp))
    assert res["kind"] == "pairs" and res["results"]["hp"]["n"] == len(rows) - 1
    assert res["report"]["decode_failures"] == 1 and items[0]["hp_1"] is None and items[1]["hp_1"] is not None
    assert res["results"]["hp"]["dropped"] == [0] and res["dropped"] == {"hp": [0]}  # named, not silently lost
    assert "| HP |" in md and "HP: 1 pair(s) dropped (non-finite score or unreadable image): 0" in md


def test_outputs_checked_before_models_load(data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["eval", "--data", str(data["triplets"]), "--ict", str(tmp_path / "no-such-model"), "--hp", "none"]
    assert icthp([*args, "-o", str(blocker / "res.json")]) == 2
    err = capsys.readouterr().err
    assert "--output" in err and "no-such-model" not in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:  # argparse: invalid choice
        icthp([*args, "--protocol", "nope"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_default_workers_are_sized_from_the_cores(data, tiny_ict, tiny_hp, tmp_path, monkeypatch):
    """Without --workers the shared option is None and every command sizes the decode pool itself."""
    from icthp_core.options import ModelOptions

    assert ModelOptions(workers=3).decode_workers("cpu") == 3
    for cores, want in ((1, 0), (2, 0), (8, 2), (16, 4), (64, 4)):  # CPU: leave the model cores free, at most 4
        monkeypatch.setattr("os.cpu_count", lambda c=cores: c)
        assert ModelOptions().decode_workers("cpu") == want, cores
    monkeypatch.undo()
    out = tmp_path / "res.json"
    args = ["eval", "--data", str(data["triplets"]), "--ict", str(tiny_ict), "--hp", str(tiny_hp), "--device", "cpu"]
    assert icthp([*args, "-o", str(out), "--bootstrap", "50"]) == 0
    row = json.loads(out.read_text())["results"]["ict_hp"]
    pairs = [row[k] for k in ("I2>I1", "I3>I2", "I3>I1")]
    assert row["n"] == 10 and all(0.0 <= a <= 1.0 for a in pairs)  # all 10 triplets scored
    assert row["avg"] == pytest.approx(np.mean(pairs)) and all(a * 20 == pytest.approx(round(a * 20)) for a in pairs)
    assert row["ci"]["avg"][0] <= row["avg"] <= row["ci"]["avg"][1]
