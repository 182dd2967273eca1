"""`icthp_core.scoring.cpu`: the CPU's bf16 support is detected (never assumed), and `icthp score --dtype bf16` on a CPU
says so when half precision would be emulated. Checked against /proc/cpuinfo and torch read here, on whatever CPU runs
the tests (machines of the same kind differ: some have AVX512-BF16 / AMX, some not)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from icthp_cli.main import main
from icthp_core.scoring import cpu


def _flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.fixture()
def fresh_features():
    cpu.cpu_features.cache_clear()
    yield
    cpu.cpu_features.cache_clear()


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads /proc/cpuinfo (Linux)")
def test_features_are_read_from_this_cpu(fresh_features):
    flags, got = _flags(), cpu.cpu_features()
    assert {k: got[k] for k in ("avx512f", "avx512_bf16", "amx_bf16")} == {
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }
    assert got["torch_isa"] == torch.backends.cpu.get_cpu_capability() and got["cores"] >= 1
    assert cpu.native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


def test_either_bf16_unit_counts_and_none_means_emulated(fresh_features, monkeypatch):
    base = {"avx512f": True, "avx512_bf16": False, "amx_bf16": False, "cores": 2, "torch_isa": "AVX512"}
    for avx, amx, native in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(cpu, "cpu_features", lambda a=avx, m=amx: base | {"avx512_bf16": a, "amx_bf16": m})
        assert cpu.native_bf16() is native


@pytest.mark.parametrize("native", [True, False])
def test_score_in_bf16_on_a_cpu_says_when_it_is_emulated(native, tiny_ict, tiny_hp, image_dir, monkeypatch, capsys):
    monkeypatch.setattr(cpu, "native_bf16", lambda: native)
    argv = ["score", "--ict", str(tiny_ict), "--hp", str(tiny_hp), "--prompt", "a cat", str(image_dir / "img0.png")]
    assert main([*argv, "--device", "cpu", "--dtype", "bf16", "--workers", "0", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "scoring on cpu in bf16" in err
    assert ("half precision is emulated and slower than fp32" in err) is (not native)
