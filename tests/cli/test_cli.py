"""`icthp score` end to end: table, outputs, bad files, prompts files, resume, exit codes."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch

from icthp_cli.main import main
from icthp_core import load_scorer

PROMPT = "a tiny dragon taking a bath in a teacup"


@pytest.fixture()
def images(image_dir, tmp_path):
    d = tmp_path / "imgs"
    shutil.copytree(image_dir, d)
    return d


def _args(tiny_ict, tiny_hp, *extra):
    return ["score", "--ict", str(tiny_ict), "--hp", str(tiny_hp), "--no-progress", "--workers", "0", *extra]


def test_score_folder_prints_table_and_writes_jsonl(tiny_ict, tiny_hp, images, tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    assert main(_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(images), "-o", str(out), "--batch-size", "2")) == 0
    table = capsys.readouterr().out
    assert "ICT-HP" in table and "rank" in table
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(set(r) >= {"image", "prompt", "ict", "hp", "ict_hp", "error"} for r in rows)
    paths = sorted(str(p) for p in images.iterdir())
    assert [r["image"] for r in rows] == paths
    ref = load_scorer(tiny_ict, tiny_hp, device="cpu").score(paths, PROMPT)
    got = torch.tensor([r["ict_hp"] for r in rows])
    assert torch.allclose(got, ref["ict_hp"], atol=1e-6)


def test_bad_files_are_reported_and_others_scored(tiny_ict, tiny_hp, images, tmp_path, capsys):
    (images / "corrupt.png").write_bytes(b"\x89PNG not really")
    (images / "empty.jpg").write_bytes(b"")
    data = (images / "img3.jpg").read_bytes()
    (images / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "s.csv"
    code = main(_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(images), str(images / "notes.txt"), "-o", str(out)))
    assert code == 0
    err = capsys.readouterr().err
    for name in ("corrupt.png", "empty.jpg", "truncated.jpg", "notes.txt"):
        assert name in err
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    bad = {r["image"].rsplit("/", 1)[-1] for r in rows if r["error"]}
    assert bad == {"corrupt.png", "empty.jpg", "truncated.jpg", "notes.txt"}
    assert sum(1 for r in rows if not r["error"] and float(r["ict_hp"]) == float(r["ict_hp"])) == 6


def test_exit_code_nonzero_only_when_nothing_scored(tiny_ict, tiny_hp, tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    assert main(_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(tmp_path / "a.png"))) == 1


def test_prompts_file_many_prompts(tiny_ict, tiny_hp, images, tmp_path):
    pf = tmp_path / "pairs.jsonl"
    names = sorted(p.name for p in images.iterdir())
    prompts = ["a cat", "a dog", "a red car", "a cat", "mountains", "a dog"]
    rows = [json.dumps({"image": f"imgs/{n}", "prompt": p}) for n, p in zip(names, prompts, strict=True)]
    pf.write_text("\n".join(rows))
    out = tmp_path / "o.jsonl"
    assert main(_args(tiny_ict, tiny_hp, "--prompts-file", str(pf), "-o", str(out))) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    ref = load_scorer(tiny_ict, tiny_hp, device="cpu").score([str(images / n) for n in names], prompts)
    assert torch.allclose(torch.tensor([r["ict"] for r in rows]), ref["ict"], atol=1e-6)


def test_resume_skips_written_rows_and_duplicates_nothing(tiny_ict, tiny_hp, images, tmp_path, capsys):
    out = tmp_path / "o.jsonl"
    full = tmp_path / "full.jsonl"
    assert main(_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(images), "-o", str(full))) == 0
    lines = full.read_text().splitlines()
    # a run killed after 2 rows, in the middle of writing the third
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])
    assert main(_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(images), "-o", str(out))) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(images), "-o", str(out), "--resume")) == 0
    got = [json.loads(x) for x in out.read_text().splitlines()]
    want = [json.loads(x) for x in lines]
    assert [r["image"] for r in got] == [r["image"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert a["ict_hp"] == pytest.approx(b["ict_hp"], abs=1e-6)


def test_empty_prompt_is_an_error(tiny_ict, tiny_hp, images, capsys):
    assert main(_args(tiny_ict, tiny_hp, "--prompt", "  ", str(images))) == 2
    assert "empty" in capsys.readouterr().err


def test_long_prompt_warns_and_truncates(tiny_ict, tiny_hp):
    from icthp_core.scoring.text import PromptTruncatedWarning

    s = load_scorer(tiny_ict, tiny_hp, device="cpu")
    with pytest.warns(PromptTruncatedWarning, match="truncated to 77"):
        s.score(torch.rand(1, 3, 224, 224), "very " * 200 + "long")


def test_unknown_metric_and_missing_prompt(tiny_ict, tiny_hp, images, capsys):
    assert main(_args(tiny_ict, tiny_hp, "--metrics", "ict,foo", "--prompt", "x", str(images))) == 2
    assert "unknown" in capsys.readouterr().err
    assert main(_args(tiny_ict, tiny_hp, str(images))) == 2
    assert "need a prompt" in capsys.readouterr().err


def test_hp_only_needs_no_prompt(tiny_ict, tiny_hp, images, capsys):
    assert main(_args(tiny_ict, tiny_hp, "--metrics", "hp", str(images))) == 0
    assert "HP" in capsys.readouterr().out


def test_mismatched_prompt_list_is_an_error(tiny_ict, tiny_hp):
    s = load_scorer(tiny_ict, tiny_hp, device="cpu")
    with pytest.raises(ValueError, match="2 prompts for 3 images"):
        s.score(torch.rand(3, 3, 64, 64), ["a", "b"])


@pytest.mark.slow  # a fresh interpreter importing torch and open_clip: the full tier
def test_console_script_runs(tiny_ict, tiny_hp, images):
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "icthp_cli",
            *_args(tiny_ict, tiny_hp, "--prompt", PROMPT, str(images / "img0.png")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "img0.png" in r.stdout
