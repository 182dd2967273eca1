"""The fast tier's happy paths of the jobs whose process-level tests are slow: `train-ict`, `train-hp`, `draft` and
`explain`, each run through the real command entry `icthp_cli.main.main([...])` in the pytest process (torch is
imported already, so a run costs about a second), with exit code 0, what it prints and the files it writes checked.

The same jobs as a user runs them, in their own process, stay in the slow tier: `test_train_ict_then_train_hp_exit_0`
and `test_draft_tiny_sd3` (tests/cli/test_jobs.py), `test_explain_writes_overlays_and_json`
(tests/core/explain/test_explain_cli.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from icthp_cli.main import main
from tests.cli.conftest import draft_args, train_args

PROMPT = "a red cube, photo"
pytestmark = [pytest.mark.usefixtures("fresh_accelerate_state")]  # the jobs run in this process (tests/conftest.py)


def _train_args(tiny_clip, toy, out, **extra) -> list[str]:
    """The slow tests' options (`train_args`, tests/cli/conftest.py), one step of 2."""
    return train_args(tiny_clip, toy, out, batch_size=2, max_steps=1, **extra)


def _summary(capsys) -> dict:
    """The job's summary: the last line of its stdout, one JSON object."""
    out = capsys.readouterr().out
    return json.loads(out.strip().splitlines()[-1])


def _check_training(summary: dict, stage: str, out: Path, toy) -> None:
    """One step on all 16 toy triplets, exported to OUT/ICT or OUT/HP, the summary and step metrics on disk."""
    assert (summary["stage"], summary["steps"], summary["num_processes"]) == (stage, 1, 1)
    assert summary["exported"] == str(out / stage.upper()) and (out / stage.upper()).is_dir()
    assert summary["data"]["train"]["source"] == str(toy["triplets"]) and summary["data"]["train"]["kept"] == 16
    assert json.loads((out / f"{stage}_summary.json").read_text()) == summary
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1] and math.isfinite(steps[0]["train/loss"])


def _scores(ict, hp, image: Path) -> dict[str, float]:
    from icthp_core import load_scorer

    scorer = load_scorer(ict, hp, device="cpu")
    return {m: float(v[0]) for m, v in scorer.score(str(image), PROMPT).items()}


def test_train_ict_exports_a_loadable_model(tiny_clip, toy, image_dir, tmp_path, capsys):
    out = tmp_path / "ict"
    assert main(["train-ict", *_train_args(tiny_clip, toy, out, theta=0.05)]) == 0
    _check_training(_summary(capsys), "ict", out, toy)
    trained = _scores(out / "ICT", None, image_dir / "img0.png")
    assert set(trained) == {"ict"} and math.isfinite(trained["ict"])
    assert trained != _scores(tiny_clip, None, image_dir / "img0.png")  # one step moved the weights


def test_train_hp_exports_a_loadable_model(tiny_clip, tiny_ict, toy, image_dir, tmp_path, capsys):
    out = tmp_path / "hp"
    args = _train_args(tiny_clip, toy, out, head_dims="[16,8,4,4]", ict_model=tiny_ict)
    assert main(["train-hp", *args]) == 0
    _check_training(_summary(capsys), "hp", out, toy)
    scores = _scores(tiny_ict, out / "HP", image_dir / "img0.png")
    assert set(scores) == {"ict", "hp", "ict_hp"} and all(map(math.isfinite, scores.values()))


def test_draft_writes_the_lora(tiny_pipeline_dirs, tiny_ict, tiny_hp, tmp_path, capsys):
    from safetensors.torch import load_file

    args, out = draft_args(tiny_pipeline_dirs["sd3"], tiny_ict, tiny_hp, tmp_path)
    assert main(["draft", *args]) == 0
    lora = Path(_summary(capsys)["lora"])
    assert lora == out / "pytorch_lora_weights.safetensors"
    weights = load_file(lora)
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights), sorted(weights)[:4]
    assert {w.shape[0] for k, w in weights.items() if "lora_A" in k} == {4}  # rank=4
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # the step trained B (starts at 0)


def test_explain_names_the_words_and_writes_its_files(tiny_ict, tiny_hp, image_dir, tmp_path, capsys):
    out = tmp_path / "out"
    image = image_dir / "img1.png"
    models = ["--ict", str(tiny_ict), "--hp", str(tiny_hp), "--device", "cpu"]
    argv = ["explain", *models, "--prompt", PROMPT, "--grid", "2", "--ig-steps", "2", "--no-progress", str(image)]
    assert main([*argv, "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.err == "explaining on cpu: words, occlusion, relevance; occlusion grid 2x2\n"
    record = json.loads((out / "img1.json").read_text())
    assert record["prompt"] == PROMPT and record["image"] == str(image)
    expected = _scores(tiny_ict, tiny_hp, image)
    assert record["scores"] == pytest.approx(expected, abs=1e-4)
    assert (
        printed.out
        == f"{image}: " + ", ".join(f"{m}={v:.4f}" for m, v in record["scores"].items()) + f" -> {out}/img1.json\n"
    )
    for metric in ("ict", "ict_hp"):  # the prompt's words, where they stand in it (sorted by contribution)
        table = record["words"][metric]
        assert table["score"] == pytest.approx(record["scores"][metric], abs=1e-5)
        assert sorted((w["start"], w["word"]) for w in table["words"]) == [
            (0, "a"),
            (2, "red"),
            (6, "cube"),
            (12, "photo"),
        ]
        assert all(PROMPT[w["start"] : w["end"]] == w["word"] for w in table["words"])
    assert "hp" not in record["words"]  # HP reads no prompt
    assert len(record["regions"]["ict_hp"]["occlusion"]) == 2  # the 2 x 2 grid
    methods = [f"{m}/{k}" for m in ("ict", "hp", "ict_hp") for k in ("occlusion", "relevance")]
    assert sorted(record["files"]) == sorted([*methods, "ict/words", "ict_hp/words"])
    assert record["files"]["ict_hp/relevance"] == "img1.ict_hp.relevance.png"
    assert sorted(p.name for p in out.iterdir()) == sorted([*record["files"].values(), "img1.json"])
    for name in record["files"].values():
        assert (out / name).stat().st_size > 0
    assert torch.get_num_threads() == 1  # the job leaves the session's one torch thread alone
