"""Docs as tests: what README.md, docs/*.md, comfy_nodes/README.md and examples/*/README.md tell a user to type.

Every fenced shell or Python block carries a marker comment on one of the two lines above it:

- `<!-- docs-test: run -->`: the block is executed here (`bash -euo pipefail`; its `icthp` lines forked from the
  preloaded job server through `jobproc.shim`), in a folder holding the files the docs name
  (`img1.png`, `img2.jpg`, `folder/`, `a.png`, `b.jpg`, `best.png`, `runner_up.png`, `pairs.csv`; links to the
  repository's `bench/`, `examples/`, `scripts/`, `train/`), with the tiny hub cache (tiny random models under the
  real repo ids, `HF_HUB_OFFLINE=1`), after the substitutions of SHELL_SUBS / PY_SUBS (sizes, devices, step counts);
- `<!-- docs-test: skip (why) -->`: it cannot run here (a GPU, a real data set, a download, a server); the reason
  is required.

A block with neither fails `test_every_block_is_marked`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jobproc
import pytest
from doc_blocks import ROOT, all_blocks, is_shell

#: (pattern, replacement) applied to shell blocks before they run: CPU sizes for the docs' GPU-sized values
SHELL_SUBS: list[tuple[str, str]] = [
    (r"(?m)^\. \.venv/bin/activate$", ": the test runs icthp from its own environment"),
    (r"(?m)^pip install .*$", ": the test environment has every extra installed"),
    (r"--device cuda\b", "--device cpu"),
    (r"--dtype (?:bf16|fp16)\b", "--dtype fp32"),
    (r"\bmax_steps=\d+", "max_steps=2"),
    (r"--bootstrap \d+", "--bootstrap 0"),
    (r"\bicthp explain ", "icthp explain --grid 2 --ig-steps 2 "),  # CPU default: 7 x 7 occlusion, 32 IG steps
]
#: the same for Python blocks; PY_NAMES are defined before a block runs (the docs' placeholders)
PY_SUBS: list[tuple[str, str]] = [
    (r'device="cuda"', 'device="cpu"'),
    (r'dtype="(?:bf16|fp16)"', 'dtype="fp32"'),
    (r'"/models/PickScore_v1"', '"yuvalkirstain/PickScore_v1"'),
]
PY_NAMES = (
    "import torch\n"
    "images_0to1 = torch.rand(2, 3, 64, 64, requires_grad=True)\n"
    "prompts = ['a red cube', 'a blue sphere']\n"
)

BLOCKS = all_blocks()
RUN = [b for b in BLOCKS if b.marker == "run"]


def test_every_block_is_marked():
    unmarked = [b.where for b in BLOCKS if b.marker is None]
    assert not unmarked, (
        "doc blocks without a docs-test marker (add `<!-- docs-test: run -->` above the fence to run it against "
        "the tiny hub cache, or `<!-- docs-test: skip (why) -->`): " + ", ".join(unmarked)
    )
    no_reason = [b.where for b in BLOCKS if b.marker == "skip" and len(b.reason.strip()) < 8]
    assert not no_reason, "skip markers need a reason: " + ", ".join(no_reason)


def test_docs_have_runnable_blocks():
    """The mechanism is live: blocks of the main jobs run (a regression that marks everything skip shows here)."""
    assert any(is_shell(b) for b in RUN) and any(b.lang == "python" for b in RUN)


def _substitute(text: str, subs: list[tuple[str, str]]) -> str:
    for pattern, repl in subs:
        text = re.sub(pattern, repl, text)
    return text


@pytest.fixture()
def user_dir(tmp_path) -> Path:
    """A user's folder with the files the docs' commands name."""
    from PIL import Image

    def img(path: Path, color: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 40), color).save(path)

    names = (("img1.png", "red"), ("img2.jpg", "green"), ("a.png", "blue"), ("b.jpg", "white"))
    for name, color in (*names, ("best.png", "red"), ("runner_up.png", "gray")):
        img(tmp_path / name, color)
    img(tmp_path / "folder" / "x.png", "yellow")
    img(tmp_path / "folder" / "y.jpg", "black")
    (tmp_path / "pairs.csv").write_text("image,prompt\nimg1.png,a red square\nfolder/x.png,a yellow square\n")
    for name in ("bench", "examples", "scripts", "train"):  # the repository's folders the docs run from its root
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    return tmp_path


@pytest.fixture(scope="module")
def icthp_shim() -> Iterator[Path]:
    """A folder whose `icthp` forks each job from the preloaded server (tests/jobproc.py `shim`): a block's `icthp`
    lines skip the 3-5 s torch import of a fresh interpreter; the installed entry is tested in tests/cli."""
    with jobproc.shim() as folder:
        yield folder


@pytest.mark.slow  # each block runs its jobs in subprocesses
@pytest.mark.parametrize("block", RUN, ids=[b.where for b in RUN])
def test_doc_block_runs(block, user_dir, hub_env, icthp_shim):
    env = dict(hub_env)
    # `icthp` through the shim; `python`, `accelerate` of this environment
    env["PATH"] = os.pathsep.join([str(icthp_shim), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(ROOT)
    env.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is faster on a shared 2-core machine
    if block.lang == "python":
        code = PY_NAMES + _substitute(block.text, PY_SUBS)
        cmd = [sys.executable, "-c", code]
    else:
        cmd = ["bash", "-euo", "pipefail", "-c", _substitute(block.text, SHELL_SUBS)]
    proc = subprocess.run(cmd, cwd=user_dir, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{block.where} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, f"{block.where}:\n{proc.stderr[-3000:]}"


def test_core_api_lists_the_registered_metrics():
    """docs/core_api.md's metric list is the registry's (the docs showed 8 of 11)."""
    from icthp_core.scoring.registry import list_metrics

    text = (ROOT / "docs" / "core_api.md").read_text(encoding="utf-8")
    line = next(x for x in text.split("\n- ") if x.startswith("`list_metrics() -> list[str]`"))
    listed = re.findall(r"`([a-z_.0-9]+)`", line.split(":", 1)[1])
    assert listed == list_metrics()
    assert f"the {len(list_metrics())} registered metrics" in line
