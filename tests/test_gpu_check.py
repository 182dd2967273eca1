"""bench/gpu_check.py: the prepared GPU check runs end to end as a CPU dry run, so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

# the GPU machine's script, checked as a CPU dry run in the full tier (CI); not part of the toolkit's fast tier
pytestmark = [pytest.mark.slow]

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


def _run_in_process(cmd: list[str], monkeypatch) -> tuple[int, str, str]:
    """`python SCRIPT ARGS...` run in this process (runpy, the same argv): (exit code, stdout, traceback)."""
    import contextlib
    import io
    import runpy
    import sys
    import traceback

    out, rc, err = io.StringIO(), 0, ""
    with monkeypatch.context() as m, contextlib.redirect_stdout(out):
        m.setattr(sys, "argv", [cmd[1], *cmd[2:]])
        try:
            runpy.run_path(cmd[1], run_name="__main__")
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # noqa: BLE001 - a failing script is a failed part, as in a child process
            rc, err = 1, traceback.format_exc()
    return rc, out.getvalue(), err


@pytest.fixture
def in_process_scripts(monkeypatch):
    """bench/gpu_check.py with each part's script (and the scripts those start: bench_score.py's measuring children)
    run in this process with the same argv: the parts' work and wiring run as on the GPU machine, without a Python +
    torch start-up per script. The process boundary itself (output streamed, a part killed at its limit with its
    children) is `test_parts_run_in_their_own_process_and_are_killed_at_their_limit`."""
    import subprocess
    import sys

    gc = _load()
    real_run = subprocess.run

    def run_script(cmd: list[str], timeout: float, log) -> tuple[int, str]:
        rc, out, err = _run_in_process(cmd, monkeypatch)
        log.write(out + err)
        return rc, out + err

    def run(cmd, *args, **kwargs):
        if isinstance(cmd, list) and cmd[:1] == [sys.executable] and str(cmd[1]).endswith(".py"):
            rc, out, err = _run_in_process([str(c) for c in cmd], monkeypatch)
            return subprocess.CompletedProcess(cmd, rc, out, err)
        return real_run(cmd, *args, **kwargs)

    monkeypatch.setattr(gc, "_run_script", run_script)
    monkeypatch.setattr(subprocess, "run", run)
    threads = torch.get_num_threads()
    yield gc
    torch.set_num_threads(threads)  # parts set one thread for their tiny ops


def test_parts_run_in_their_own_process_and_are_killed_at_their_limit(tmp_path):
    """`_run_script`: a part's output is streamed into the log and returned with its exit code; a part over its
    time limit is killed with the processes it started (rc 124), the rest of the run goes on."""
    import io
    import sys
    import time

    gc = _load()
    log = io.StringIO()
    rc, text = gc._run_script([sys.executable, "-c", "import sys; print('part says hi'); sys.exit(3)"], 60, log)
    assert (rc, text, log.getvalue()) == (3, "part says hi\n", "part says hi\n")
    child = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
    child += "; time.sleep(60)"
    t0 = time.perf_counter()
    rc, _ = gc._run_script([sys.executable, "-c", child], 1.0, io.StringIO())
    assert rc == 124 and time.perf_counter() - t0 < 30  # the grandchild was killed too: it held the pipe open


def test_dry_run_of_the_default_parts(tmp_path, monkeypatch, in_process_scripts):
    """The default GPU run's parts (issue 23's questions) end to end at tiny sizes on the CPU; serve skips with its
    reason where Ray is missing (as on the GPU machine). draft_offload, draft_lowmem: the on-request test; explain:
    tests/core/explain/test_explain_bench.py."""
    gc = in_process_scripts
    monkeypatch.setattr(gc, "ray_available", lambda: False)
    parts = "steady,host_scaling,precision_vith,serve"
    report = gc.main(["--out", str(tmp_path), "--dry-run", "--parts", parts])
    got = report["parts"]
    failed = {k: v.get("error") for k, v in got.items() if v.get("status") not in ("ok", "skipped")}
    assert not failed, failed
    assert got["serve"]["status"] == "skipped" and "75.6 MiB" in got["serve"]["error"]
    row = got["steady"]["ours"][0]  # start-up apart from the steady rate, over 3x the files (items cycled)
    assert got["steady"]["items"] == 24 and row["images"] == 24
    assert row["startup_s"] > 0 and row["steady_img_per_s"] > 0 and row["steady_vs_model"] > 0
    hs = got["host_scaling"]
    assert [r["workers"] for r in hs["rows"]] == [0, 1] and hs["one_core"]["img_per_s"] > 0
    assert all(r["per_worker_vs_one_core"] > 0 and r["startup_s"] > 0 for r in hs["rows"])
    pv = got["precision_vith"]
    assert set(pv) >= {"fp32", "fp32_tf32", "fp16", "bf16", "spread_fp32"}
    d = pv["bf16"]["vs_fp32"]["ict_hp"]
    assert 0 < d["abs_delta_median"] <= d["abs_delta_p99"] <= d["abs_delta_max"]  # bf16 really differs from fp32
    assert pv["spread_fp32"]["ict_hp"]["range_median"] > 0
    md = (tmp_path / "report.md").read_text()
    assert "## steady" in md and "## host_scaling" in md and "## precision_vith" in md and "## serve" in md


@pytest.mark.slow  # measured: 21 CPU s (tests/durations.json)
def test_dry_run_of_the_parts_on_request(tmp_path, in_process_scripts):
    """The parts measured on the H200 already (run when named): still run end to end. draft_sd3 (bench_draft.py
    --tiny --arch sd3 at K=1) is bench/bench_draft.py's own smoke run
    (tests/core/diffusion/draft/test_draft_scripts.py::test_bench_tiny_smoke); its wiring is draft_offload's and
    draft_lowmem's, run here with their extra options."""
    gc = in_process_scripts
    on_request = "parity,decode,precision,sdpa,bench_score,draft_sd3"
    assert not set(on_request.split(",")) & set(gc.DEFAULT_PARTS)
    assert gc.DRAFT_PARTS["draft_sd3"][:2] == ("sd3", "1,3") and not gc.DRAFT_PARTS["draft_sd3"][2]
    parts = "parity,decode,precision,sdpa,bench_score,draft_offload,draft_lowmem"  # + default parts left out above
    report = gc.main(["--out", str(tmp_path), "--dry-run", "--parts", parts])
    failed = {k: v.get("error") for k, v in report["parts"].items() if v.get("status") != "ok"}
    assert not failed, failed
    assert report["parts"]["parity"]["ok"] and report["parts"]["decode"]["ok"]
    row = report["parts"]["bench_score"]["ours"][0]
    assert row["read_img_per_s"] > row["prep_img_per_s"] > 0 and row["overlap"] > 0
    low = report["parts"]["draft_lowmem"]["rows"][0]
    assert (low["optimizer"], low["vae_tiling"], low["k"]) == ("adamw8bit", 16, 1)
    assert report["parts"]["draft_offload"]["rows"][0]["offload_frozen"] is True
    assert json.loads((tmp_path / "report.json").read_text())["dry_run"] is True


def test_ordered_loader_splits_batches_over_workers(tmp_path, monkeypatch):
    """Each batch is decoded in pieces by all workers and reassembled in order: same batches as in process."""
    from PIL import Image

    from icthp_core.data.batch import _pieces, iter_file_batches, worker_piece

    assert _pieces(7, 5, 2) == [[0, 1], [2, 3], [4], [5, 6]]
    assert worker_piece(64, 14) == 16 and worker_piece(64, 1) == 64 and worker_piece(8, 14) == 8
    assert worker_piece(128, 4) == 32
    items = []
    for i in range(7):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (40 + 8 * i, 32), (30 * i, 10, 200)).save(p)
        items.append((str(p), "a"))
    items.insert(3, (str(tmp_path / "missing.png"), "a"))
    ref = list(iter_file_batches(items, ["crop"], batch_size=5, num_workers=0))
    monkeypatch.setattr("icthp_core.data.batch.MIN_PIECE", 2)  # pieces of 3 + 2 items per batch of 5
    got = list(iter_file_batches(items, ["crop"], batch_size=5, num_workers=2))
    assert [len(b["rows"]) for b in got] == [5, 3]
    assert [r["image"] for b in got for r in b["rows"]] == [r["image"] for b in ref for r in b["rows"]]
    assert got[0]["rows"][3]["error"] and got[0]["pixels"]["crop"].shape[0] == 4
    for a, b in zip(ref, got, strict=True):
        assert torch.equal(a["pixels"]["crop"], b["pixels"]["crop"])


def test_unknown_part_is_a_clear_error(tmp_path):
    gc = _load()
    assert "bench_compile" in gc.PARTS and "bench_compile" not in gc.DEFAULT_PARTS  # measured no gain: on request
    assert set(gc.DEFAULT_PARTS) <= set(gc.PARTS)
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
