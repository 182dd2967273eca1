"""`icthp evalgen` under torchrun with 2 CPU processes (gloo): prompts sharded, one merged result equal to one
process's."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
from live import free_port
from test_evalgen_cli import _args

from icthp_cli.main import main as icthp
from tests.paths import REPO

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def test_two_process_evalgen_equals_one_process(pipeline_dirs, lora_files, prompt_txt, tmp_path):
    port = str(free_port())
    extra = ("--lora", f"hp={lora_files['flux']}", "--metrics", "none", "--gen-batch-size", "2")
    two, one = tmp_path / "two", tmp_path / "one"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    cmd += ["-m", "icthp_cli", *_args(pipeline_dirs["flux"], prompt_txt, two, *extra)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    root = REPO
    proc = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(p.name for p in (two / "scores").iterdir()) == ["part-000.jsonl", "part-001.jsonl"]  # both worked
    assert icthp(_args(pipeline_dirs["flux"], prompt_txt, one, *extra)) == 0
    pngs = sorted(p.relative_to(one) for p in (one / "images").rglob("*.png"))
    assert len(pngs) == 3 * 2 * 2
    assert pngs == sorted(p.relative_to(two) for p in (two / "images").rglob("*.png"))
    for rel in pngs:  # same batches, same noise: the same bytes
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    cols = ["model", "index", "n", "seed", "prompt", "image", "jpeg_kb"]
    assert pd.read_csv(one / "per_image.csv")[cols].equals(pd.read_csv(two / "per_image.csv")[cols])
    assert (one / "summary.md").read_text() == (two / "summary.md").read_text()
