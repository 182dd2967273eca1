"""`icthp evalgen` end to end on tiny pipelines and tiny ICT/HP: report, GenEval layout, resume, sharded scoring."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from icthp_cli.main import main as icthp


def _args(pipe_dir, prompts, out, *extra):
    return [
        "evalgen",
        "--model",
        str(pipe_dir),
        "--prompts",
        str(prompts),
        "-o",
        str(out),
        "--size",
        "32",
        "--steps",
        "2",
        "--seeds-per-prompt",
        "2",
        "--gen-batch-size",
        "3",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
        *extra,
    ]


def read_geneval_folder(imagedir) -> list[tuple[dict, str]]:
    """What GenEval's evaluation/evaluate_images.py reads: digit folders, metadata.jsonl, samples/<digits>.png."""
    out = []
    for sub in sorted(os.listdir(imagedir)):
        folder = os.path.join(imagedir, sub)
        if not os.path.isdir(folder) or not sub.isdigit():
            continue
        with open(os.path.join(folder, "metadata.jsonl")) as fp:
            metadata = json.load(fp)
        for name in sorted(os.listdir(os.path.join(folder, "samples"))):
            if re.match(r"\d+\.png", name):
                out.append((metadata, os.path.join(folder, "samples", name)))
    return out


@pytest.fixture(scope="module")
def geneval_prompts(tmp_path_factory):
    rows = [
        {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
        {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a photo of a red car"},
        {"tag": "counting", "include": [{"class": "dog", "count": 2}], "prompt": "a photo of two dogs"},
    ]
    f = tmp_path_factory.mktemp("geneval") / "evaluation_metadata.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f, rows


def test_sd3_report_layout_and_resume(pipeline_dirs, lora_files, tiny_ict, tiny_hp, geneval_prompts, tmp_path, capsys):
    prompts, rows = geneval_prompts
    out = tmp_path / "run"
    args = _args(
        pipeline_dirs["sd3"],
        prompts,
        out,
        "--lora",
        f"icthp={lora_files['sd3']}",
        "--metrics",
        "ict,hp,ict_hp",
        "--ict",
        str(tiny_ict),
        "--hp",
        str(tiny_hp),
    )
    assert icthp(args) == 0
    printed = capsys.readouterr().out
    assert "| Model | JPEG (kB) ↑ | ICT ↑ | HP ↑ | ICT-HP ↑ |" in printed and "| icthp |" in printed

    # GenEval layout, read back as GenEval's evaluator reads it
    for model in ("base", "icthp"):
        got = read_geneval_folder(out / "images" / model)
        assert [m for m, _ in got] == [r for r in rows for _ in range(2)]
        assert [os.path.basename(p) for _, p in got] == ["00000.png", "00001.png"] * 3
        assert all(Image.open(p).size == (32, 32) for _, p in got)

    # per-image rows: every image once, numbers consistent with the files
    df = pd.read_parquet(out / "per_image.parquet")
    assert len(df) == 2 * 3 * 2 and not df.duplicated(["model", "index", "n"]).any()
    assert df.equals(pd.read_parquet(out / "per_image.parquet"))
    np.testing.assert_allclose(df["ict_hp"], df["ict"] * df["hp"], rtol=1e-5)
    for r in df.itertuples():
        with Image.open(out / r.image) as im:
            from icthp_core.evaluation.image_stats import jpeg_size_kb

            assert r.jpeg_kb == jpeg_size_kb(im)
    assert set(df["seed"]) == set(range(6))

    # summary and win rates agree with the per-image rows
    summary = pd.read_csv(out / "summary.csv")
    for (model, metric), mean in summary.set_index(["model", "metric"])["mean"].items():
        assert mean == pytest.approx(df[df.model == model][metric].mean())
    wins = pd.read_csv(out / "win_rates.csv").set_index("metric")
    base = df[df.model == "base"].set_index(["index", "n"])
    lora = df[df.model == "icthp"].set_index(["index", "n"]).loc[base.index]
    for metric in ("jpeg_kb", "ict", "hp", "ict_hp"):
        assert wins.loc[metric, "wins"] == int((lora[metric] > base[metric]).sum())
        assert (
            wins.loc[metric, "n"] == 6
            and wins.loc[metric, "low"] <= wins.loc[metric, "rate"] <= wins.loc[metric, "high"]
        )
    assert (lora["jpeg_kb"] != base["jpeg_kb"]).any()  # the LoRA changed the images
    assert (out / "summary.png").is_file() and len(list((out / "grids").glob("*.png"))) == 3
    with Image.open(out / "grids" / "00000.png") as g:
        assert g.size == (2 * 32, 2 * 32)  # a column per seed, a row per model

    # a rerun does nothing new; a deleted image and a lost score row are redone, nothing else
    stamp = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    lost = out / "images" / "icthp" / "00001" / "samples" / "00000.png"
    lost.unlink()
    assert icthp(args) == 0
    after = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    assert {p for p in after if after[p] != stamp.get(p)} == {lost}
    score_lines = sum(len(f.read_text().splitlines()) for f in (out / "scores").glob("part-*.jsonl"))
    assert score_lines == 13  # the regenerated image was scored again, nothing else
    again = pd.read_parquet(out / "per_image.parquet")
    redone = (again["model"] == "icthp") & (again["index"] == 1) & (again["n"] == 0)
    cols = ["seed", "jpeg_kb", "ict", "hp", "ict_hp"]
    assert len(again) == 12 and again.loc[~redone, cols].equals(df.loc[~redone, cols])
    # the regenerated image (alone in its batch now) equals the first one up to float rounding
    np.testing.assert_allclose(again.loc[redone, cols[1:]], df.loc[redone, cols[1:]], rtol=0.02, atol=0.01)
    capsys.readouterr()

    # other generation settings in the same folder: one clear error
    assert icthp(_args(pipeline_dirs["sd3"], prompts, out, "--metrics", "none", "--steps", "3")) == 2
    assert "other settings (steps)" in capsys.readouterr().err


def test_flux_jpeg_only_and_sharded_scoring(pipeline_dirs, lora_files, prompt_txt, tmp_path):
    from icthp_core.diffusion.evalgen import score_images, unscored
    from icthp_core.diffusion.generation import plan_items
    from icthp_core.evaluation.gen_report import read_score_rows
    from icthp_core.evaluation.prompt_sets import load_prompt_set

    out = tmp_path / "flux"
    args = _args(pipeline_dirs["flux"], prompt_txt, out, "--lora", str(lora_files["flux"]), "--metrics", "none")
    assert icthp(args) == 0
    single = pd.read_csv(out / "per_image.csv")
    assert list(single.columns[:5]) == ["model", "index", "n", "seed", "prompt"] and "jpeg_kb" in single
    assert set(single["model"]) == {"base", "flux"}  # LoRA named after its folder
    settings = json.loads((out / "evalgen.json").read_text())
    assert settings["max_sequence_length"] == 256 and settings["steps"] == 2 and settings["guidance"] == 0.0
    # the same images scored by two processes (ranks 0 and 1, one after the other) merge into the same rows
    items = plan_items(load_prompt_set(prompt_txt), 2)
    two = tmp_path / "two"
    two.mkdir()
    (two / "images").symlink_to(out / "images")
    todo = unscored(two, ["base", "flux"], items, [])  # every process lists the work before any scores
    assert len(todo) == 12
    assert [score_images(two, todo, [], None, rank=r, world=2) for r in (0, 1)] == [6, 6]
    assert sorted((two / "scores").iterdir()) == [two / "scores" / "part-000.jsonl", two / "scores" / "part-001.jsonl"]
    merged = pd.DataFrame(read_score_rows(two / "scores")).sort_values(["model", "index", "n"]).reset_index(drop=True)
    ref = single.sort_values(["model", "index", "n"]).reset_index(drop=True)
    assert merged["jpeg_kb"].tolist() == ref["jpeg_kb"].tolist()
    assert unscored(two, ["base", "flux"], items, []) == []  # everything is scored: nothing to redo


def test_bad_arguments_are_one_line_errors(pipeline_dirs, prompt_txt, tmp_path, capsys):
    base = _args(pipeline_dirs["sd3"], prompt_txt, tmp_path / "x", "--metrics", "none")
    assert icthp(base + ["--lora", "base=/nowhere"]) == 2
    assert "'base' is reserved" in capsys.readouterr().err
    assert icthp(base + ["--lora", str(tmp_path)]) == 2
    assert "no pytorch_lora_weights.safetensors in this folder" in capsys.readouterr().err
    assert icthp(base + ["--metrics", "nope"]) == 2
    assert "unknown metric(s) nope" in capsys.readouterr().err
    assert icthp(base + ["--seeds-per-prompt", "0"]) == 2
    assert "--seeds-per-prompt 0: must be >= 1" in capsys.readouterr().err
