"""`icthp explain` as a user runs it (its own process, tests/jobproc.py): exit codes, files written, one-line errors."""

from __future__ import annotations

import json
import subprocess

import jobproc
import pytest

PROMPT = "a red cube, photo"


def _icthp(*args: str) -> subprocess.CompletedProcess:
    return jobproc.run(["explain", *args], timeout=300)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, wide_image):
    d = tmp_path_factory.mktemp("explain_in")
    wide_image.save(d / "wide.png")
    wide_image.resize((100, 160)).save(d / "tall.jpg")
    (d / "broken.png").write_bytes(b"not a png")
    return d


@pytest.mark.slow
def test_explain_writes_overlays_and_json(tiny_ict, tiny_hp, inputs, tmp_path):
    out = tmp_path / "out"
    models = ["--ict", str(tiny_ict), "--hp", str(tiny_hp)]
    r = _icthp(*models, "--prompt", PROMPT, "--grid", "3", str(inputs / "wide.png"), str(inputs / "tall.jpg"),
               str(inputs / "broken.png"), "-o", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "broken.png" in r.stderr and "1 of 3 images could not be explained" in r.stderr
    assert "image/s" in r.stderr or "s/image" in r.stderr  # the progress bar
    for stem in ("wide", "tall"):
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["prompt"] == PROMPT and set(record["scores"]) == {"ict", "hp", "ict_hp"}
        assert len(record["regions"]["ict_hp"]["occlusion"]) == 3
        assert {w["word"] for w in record["words"]["ict"]["words"]} == {"a", "red", "cube", "photo"}
        assert record["words"]["ict_hp"]["ig_check"]["relative_error"] < 0.01
        for name in record["files"].values():
            assert (out / name).stat().st_size > 0
        assert f"{stem}.ict_hp.relevance.png" in record["files"].values()
    assert not (out / "broken.json").exists()


@pytest.mark.slow
def test_explain_bad_input_is_one_line_exit_2(tiny_ict, tiny_hp, inputs, tmp_path):
    models = ["--ict", str(tiny_ict), "--hp", str(tiny_hp)]
    cases = [
        ([*models, str(inputs / "wide.png"), "-o", str(tmp_path)], "--prompt: metrics ict, ict_hp need a prompt"),
        ([*models, "--prompt", "x", str(inputs / "broken.png"), "-o", str(tmp_path)], "broken.png"),
    ]
    for args, needle in cases:
        r = _icthp(*args)
        assert r.returncode == 2, (args, r.stderr)
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith("icthp explain:")]
        assert len(lines) == 1 and needle in lines[0], r.stderr
        assert "Traceback" not in r.stderr


def test_explain_bad_options_in_process(tiny_ict, tiny_hp, inputs, tmp_path, capsys):
    from icthp_cli.main import main

    models = ["explain", "--ict", str(tiny_ict), "--hp", str(tiny_hp), "--prompt", "x", str(inputs / "wide.png")]
    cases = [
        (["--metrics", "nope", "-o", str(tmp_path)], "nope"),
        (["--methods", "saliency", "-o", str(tmp_path)], "saliency"),
        (["--grid", "0", "-o", str(tmp_path)], "--grid 0"),
        ([], "--output"),
    ]
    for extra, needle in cases:
        assert main([*models, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("icthp explain:") and needle in err[0], err


@pytest.mark.slow
def test_explain_blip_metric_writes_its_relevance(inputs, tmp_path):
    """A BLIP metric (ImageReward) gets a relevance overlay from the CLI, nothing skipped."""
    from icthp_core.testing.blip import save_tiny_imagereward

    src = save_tiny_imagereward(tmp_path / "IR")
    out = tmp_path / "out"
    r = _icthp("--ict", "none", "--hp", "none", "--source", f"imagereward={src}", "--metrics", "imagereward",
               "--methods", "relevance", "--prompt", PROMPT, "--no-progress", str(inputs / "wide.png"),
               "-o", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    record = json.loads((out / "wide.json").read_text())
    assert "wide.imagereward.relevance.png" in record["files"].values() and not record["skipped"]
    assert (out / "wide.imagereward.relevance.png").stat().st_size > 0
