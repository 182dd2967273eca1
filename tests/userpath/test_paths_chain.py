"""Files that name other files resolve from their own folder: the jobs' outputs feed each other from any directory.

The chain runs as a user types it, each step from a different working directory (`a/`, `b/`, `c/`), with the
default hub ids served by the tiny hub cache.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import jobproc
import pytest

from icthp_core.data.datasets import TripletRecord, load_triplets, write_triplets
from icthp_core.data.paths import portable, resolve


def _icthp(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    proc = jobproc.run(args, cwd=cwd, env=env, timeout=600)
    assert proc.returncode == 0, f"icthp {' '.join(args)} (in {cwd.name}/): {proc.stderr[-3000:]}"
    return proc


def test_portable_and_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert portable("data/x.png", "out") == "../data/x.png"
    assert portable("/abs/x.png", "out") == "/abs/x.png"
    assert resolve("../data/x.png", "out") == "data/x.png"


def test_write_triplets_paths_resolve_from_the_file(tmp_path, monkeypatch):
    """The bug: labels written with paths relative to the current folder lost every row when read back."""
    d = tmp_path / "data" / "img"
    d.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8)).save(d / f"{i}.png")
    monkeypatch.chdir(tmp_path)
    rec = TripletRecord("a", "b", tuple(f"data/img/{i}.png" for i in range(3)), {"E1": 0, "E2": 0, "R1": 0, "R2": 0})
    out = write_triplets([rec], "runs/labels/l.jsonl")
    assert json.loads(out.read_text())["image_1"] == "../../data/img/0.png"
    monkeypatch.chdir(d)
    records, report = load_triplets(tmp_path / "runs" / "labels" / "l.jsonl", require_labels=True)
    assert report.kept == 1 and Path(records[0].images[2]).resolve() == (d / "2.png").resolve()


@pytest.mark.slow  # six jobs in subprocesses
def test_chain_from_three_folders(hub_env, tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    _icthp(a, hub_env, "toy-data", "-o", "../data", "--triplets", "6", "--pairs", "4")
    # build-labels from b/ into runs/labels/ (another depth): image paths must resolve from that folder
    _icthp(
        b,
        hub_env,
        "build-labels",
        "--data",
        "../data/triplets.jsonl",
        "-o",
        "../runs/labels/labeled.jsonl",
        "--theta",
        "0.2",
    )
    labeled = [json.loads(x) for x in (tmp_path / "runs" / "labels" / "labeled.jsonl").read_text().splitlines()]
    assert len(labeled) == 6 and all((tmp_path / "runs" / "labels" / r["image_3"]).is_file() for r in labeled)
    # eval reads them from c/: every row kept
    ev = _icthp(c, hub_env, "eval", "--data", "../runs/labels/labeled.jsonl", "--bootstrap", "0", "-o", "table.json")
    assert "6/6 rows used" in ev.stdout, ev.stdout
    assert json.loads((c / "table.json").read_text())["n"] == 6
    # train-ict with automatic labels (theta=) from a/, output in runs/: the labels it writes read back
    _icthp(
        a,
        hub_env,
        "train-ict",
        "train_data=../data/triplets.jsonl",
        "relabel=true",
        "theta=0.2",
        "max_steps=1",
        "batch_size=2",
        "num_workers=0",
        "report_to=none",
        "plot=false",
        "eval_every=0",
        "checkpoint_every=0",
        "output_dir=../runs/ict",
    )
    lab = tmp_path / "runs" / "ict" / "labels" / "train_labeled.jsonl"
    assert all((lab.parent / json.loads(x)["image_1"]).is_file() for x in lab.read_text().splitlines())
    # score with relative image paths from b/, output in runs/scores/; read back as a prompts file from c/
    _icthp(
        b,
        hub_env,
        "score",
        "--prompt",
        "a red cube",
        "../data/img/t0000_1.png",
        "../data/img/t0000_2.png",
        "-o",
        "../runs/scores/s.csv",
        "--no-progress",
    )
    with open(tmp_path / "runs" / "scores" / "s.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["../../data/img/t0000_1.png", "../../data/img/t0000_2.png"]
    _icthp(
        c,
        hub_env,
        "score",
        "--prompts-file",
        "../runs/scores/s.csv",
        "--metrics",
        "hp",
        "-o",
        "again.jsonl",
        "--no-progress",
    )
    again = [json.loads(x) for x in (c / "again.jsonl").read_text().splitlines()]
    assert len(again) == 2 and not any(r["error"] for r in again)
