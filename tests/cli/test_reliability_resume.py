"""Kill-and-resume: `icthp score` SIGKILLed at random points, then resumed: 0 rows lost, duplicated or corrupted."""

from __future__ import annotations

import csv
import json
import os
import signal
import time

import jobproc
import numpy as np
import pytest
from PIL import Image

from icthp_cli.main import main
from icthp_core.data.outputs import read_rows

N = 80


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("killres")
    rng = np.random.default_rng(0)
    with open(d / "items.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "prompt"])
        for i in range(N):
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
            # multi-line prompts with quotes, commas and a line separator: the hardest CSV fields to tear
            w.writerow([f"{i:03d}.png", f'line one of {i}, "quoted"\nline two\r\nthree\u2028{i % 7}'])
    return d / "items.csv"


def _argv(tiny_ict, tiny_hp, pf, out, *extra):
    return ["score", "--ict", str(tiny_ict), "--hp", str(tiny_hp), "--prompts-file", str(pf), "-o", str(out),
            "--no-progress", "--workers", "0", "--batch-size", "1", "-q", *extra]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_sigkill_and_resume_loses_nothing(tiny_ict, tiny_hp, prompts_file, tmp_path, fmt):
    ref = tmp_path / f"ref.{fmt}"
    assert main(_argv(tiny_ict, tiny_hp, prompts_file, ref)) == 0
    want = {(r["image"], r["prompt"]): float(r["ict_hp"]) for r in read_rows(ref)}
    assert len(want) == N

    out = tmp_path / f"out.{fmt}"
    rng = np.random.default_rng(1 if fmt == "jsonl" else 2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills = 0
    for attempt in range(2):
        argv = _argv(tiny_ict, tiny_hp, prompts_file, out, *(["--resume"] if attempt else []))
        proc = jobproc.start(argv, env=env)  # its own process, forked from the preloaded server
        before = len(list(read_rows(out))) if out.exists() else 0
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # wait until this run has written a row
            if out.exists() and len(list(read_rows(out))) > before:
                break
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=60)
    assert kills >= 1
    assert main(_argv(tiny_ict, tiny_hp, prompts_file, out, "--resume")) == 0

    rows = list(read_rows(out))
    keys = [(r["image"], r["prompt"]) for r in rows]
    assert len(keys) == len(set(keys)) == N  # 0 lost, 0 duplicated
    assert not any(r["error"] for r in rows)
    got = {k: float(r["ict_hp"]) for k, r in zip(keys, rows, strict=True)}
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) for k in want) < 1e-6  # 0 corrupted
    if fmt == "jsonl":
        text = out.read_text(encoding="utf-8")
        assert "\u2028" not in text  # escaped, so even str.splitlines() readers see one row per line
        for line in text.splitlines():
            json.loads(line)  # every line is whole JSON
