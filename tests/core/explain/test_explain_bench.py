"""bench/bench_explain.py and the explain part of bench/gpu_check.py run on the tiny models (their dry runs)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.paths import REPO


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_gpu_check_explain_part_dry_run(tmp_path):
    report = _load("gpu_check").main(["--out", str(tmp_path), "--dry-run", "--parts", "explain"])
    part = report["parts"]["explain"]
    assert part["status"] == "ok", part.get("error")
    s = part["summary"]
    assert s["score_s"] > 0 and s["occlusion_x_score"] > 0 and s["relevance_x_score"] > 0
    assert s["fused_vs_explicit_max_abs"] <= 1e-5 and s["ig_relative_error_max"] < 0.01
    assert 0 <= s["occlusion_beats_random_deletion"] <= 1
    assert "## explain" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["parts"]["explain"]["summary"]["images"] == 1
