"""bench/gpu_check.py: the prepared GPU check runs end to end as a CPU dry run, so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pairwise_flips_counts_order_changes_within_groups():
    gc = _load()
    ref = [0.1, 0.2, 0.3, 0.4]
    assert gc.pairwise_flips(ref, ref) == {"pairs": 6, "flips": 0, "flip_rate": 0.0}
    swapped = [0.1, 0.3, 0.2, 0.4]  # one pair flipped
    assert gc.pairwise_flips(ref, swapped)["flips"] == 1
    # groups: pairs only within a group (2 + 1 pairs), the flipped pair spans groups 0 and 1
    r = gc.pairwise_flips(ref, swapped, groups=[0, 0, 1, 1])
    assert (r["pairs"], r["flips"]) == (2, 0)
    assert gc.pairwise_flips(ref, [0.4, 0.3, 0.2, 0.1])["flip_rate"] == 1.0
    assert gc.pairwise_flips([0.1, 0.1001], [0.2, 0.1], tie=0.01)["pairs"] == 0


@pytest.mark.slow
def test_dry_run_writes_reports(tmp_path):
    gc = _load()
    parts = "env,parity,decode,precision,sdpa,bench_score,draft_sd3,draft_offload,draft_lowmem"
    report = gc.main(["--out", str(tmp_path), "--dry-run", "--parts", parts])
    assert set(report["parts"]) == set(parts.split(","))
    failed = {k: v.get("error") for k, v in report["parts"].items() if v.get("status") != "ok"}
    assert not failed, failed
    assert report["parts"]["parity"]["ok"] and report["parts"]["decode"]["ok"]
    assert report["parts"]["bench_score"]["upstream"]["img_per_s"] > 0
    row = report["parts"]["bench_score"]["ours"][0]  # the host side alone, to locate an end-to-end gap
    assert row["read_img_per_s"] > row["prep_img_per_s"] > 0 and row["overlap"] > 0
    assert report["parts"]["draft_sd3"]["rows"][0]["est_gib"] > 0
    low = report["parts"]["draft_lowmem"]["rows"][0]
    assert (low["optimizer"], low["vae_tiling"], low["k"]) == ("adamw8bit", 16, 1)
    assert report["parts"]["draft_offload"]["rows"][0]["offload_frozen"] is True
    assert json.loads((tmp_path / "report.json").read_text())["dry_run"] is True
    md = (tmp_path / "report.md").read_text()
    assert "## Parity" in md and "## bf16 vs fp32" in md and "## draft_sd3" in md and "## draft_lowmem" in md


def test_unknown_part_is_a_clear_error(tmp_path):
    gc = _load()
    assert "bench_compile" in gc.PARTS and "bench_compile" not in gc.DEFAULT_PARTS  # measured no gain: on request
    with pytest.raises(SystemExit, match="unknown"):
        gc.main(["--out", str(tmp_path), "--dry-run", "--parts", "env,nope"])


def test_cpu_dtype_bench_times_every_variant():
    """bench/bench_cpu_dtype.py (the CPU precision speed probe) runs on the tiny tower with every variant."""
    spec = importlib.util.spec_from_file_location("bench_cpu_dtype", ROOT / "bench" / "bench_cpu_dtype.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--config", "tiny", "--batch", "2", "--reps", "1", "--int8"])
    assert set(res["img_per_s"]) == {"fp32", "bf16", "int8_dynamic"}
    assert all(v > 0 for v in res["img_per_s"].values())
    assert res["int8_speedup"] > 0 and "avx512_bf16" in res["cpu"]
