"""`icthp eval` where the data cannot be scored says so in one line (exit 2); the pairs table reads as columns."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jobproc
import pytest

from icthp_core.evaluation.metrics import choose_tie_threshold
from icthp_core.evaluation.preference import format_table, markdown_table


def _pairs(folder: Path, names: list[tuple[str, str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": "a red cube", "image_0": a, "image_1": b, "label_0": 1.0} for a, b in names]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "pairs.jsonl"


def _eval(env, cwd: Path, data: Path) -> subprocess.CompletedProcess:
    return jobproc.run(["eval", "--data", str(data), "--bootstrap", "0"], env=env, cwd=cwd, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "nan" not in proc.stdout
    errors = [x for x in proc.stderr.splitlines() if x.startswith("icthp eval:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


@pytest.mark.slow  # two subprocesses
def test_eval_unusable_data_is_one_line(hub_env, tmp_path):
    missing = _pairs(tmp_path / "missing", [("a.png", "b.png"), ("c.png", "d.png")])
    line = _one_error_line(_eval(hub_env, tmp_path, missing))
    assert "no usable pairs" in line and "image_not_found: 2" in line and str(missing.name) in line
    broken = _pairs(tmp_path / "broken", [("a.png", "b.png")])
    for name in ("a.png", "b.png"):
        (broken.parent / name).write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    line = _one_error_line(_eval(hub_env, tmp_path, broken))
    assert "no pair could be scored" in line


def test_choose_tie_threshold_without_pairs_says_so():
    with pytest.raises(ValueError, match="no scored pair"):
        choose_tie_threshold([], [], [], [0.0, 0.1])


def _res(threshold_from: str) -> dict:
    row = {"tie_aware": 0.6667, "accuracy_no_ties": 0.75, "threshold": 4.935e-13, "n": 12, "n_ties": 3}
    return {"kind": "pairs", "results": {"ict": {**row, "threshold_from": threshold_from}, "hp": dict(row)}}


def test_pairs_table_columns_are_separated_and_flag_the_optimistic_threshold():
    text = format_table(_res("test data (optimistic)"))
    lines = text.splitlines()
    assert lines[0].split() == ["model", "tie-aware", "no-ties", "t", "n", "ties"]
    assert lines[2].split() == ["ICT", "66.67", "75.00", "4.935e-13*", "12", "3"]
    assert lines[3].split() == ["HP", "66.67", "75.00", "4.935e-13", "12", "3"]
    assert "optimistic threshold" in lines[-1]
    assert "4.935e-13*" in markdown_table(_res("test data (optimistic)")) and "optimistic" in markdown_table(
        _res("test data (optimistic)")
    )
    assert "optimistic" not in format_table(_res("val-data"))
