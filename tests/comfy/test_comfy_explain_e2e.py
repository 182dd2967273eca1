"""ICTHPExplain on the real ComfyUI server: the example workflow explains the Best-of-N outputs."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.comfyui]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "comfyui" / "explain_best_of_n_api.json"


def _call(url: str, data: dict | None = None):
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _run(url: str, workflow: dict) -> dict:
    pid = _call(f"{url}/prompt", {"prompt": workflow, "client_id": "icthp-explain"})["prompt_id"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        hist = _call(f"{url}/history/{pid}")
        if hist.get(pid, {}).get("status", {}).get("status_str") in ("success", "error"):
            return hist[pid]
        time.sleep(0.1)  # poll: the prompt is done when its history says so
    pytest.fail(f"prompt {pid} did not finish")


def _workflow(**explain_inputs) -> dict:
    wf = json.loads(EXAMPLE.read_text())
    wf["8"]["inputs"].update({"ict_source": "ict", "hp_source": "hp"})
    wf["10"]["inputs"].update(explain_inputs)
    return wf


@pytest.mark.parametrize("method", ["occlusion", "relevance"])
def test_explain_example_runs_on_best_of_n_outputs(server, method):
    url, base = server
    # the smallest grid and IG path: what is checked (words, overlays) does not depend on them
    result = _run(url, _workflow(method=method, grid=2, ig_steps=2))
    assert result["status"]["status_str"] == "success", result["status"]
    table = result["outputs"]["10"]["text"][0].splitlines()
    assert table[0].startswith("#0 ict_hp=") and any(ln.startswith("#1 ict_hp=") for ln in table)
    words = [ln.split()[0] for ln in table if " drop " in ln]
    assert set(words) >= {"red", "square", "green", "patch"}
    assert all(("contained" in ln) or ("neutral" in ln) for ln in table if " drop " in ln)
    saved = result["outputs"]["11"]["images"]
    assert len(saved) == 2  # one overlay per kept image, at the input size
    for s in saved:
        img = Image.open(base / "output" / s["subfolder"] / s["filename"])
        assert img.size == (256, 256)
        assert np.asarray(img).std() > 0  # the heat colours are on it


def test_explain_node_error_names_the_metric(server):
    url, _ = server
    result = _run(url, _workflow(metric="pickscore"))
    assert result["status"]["status_str"] == "error"
    msgs = [m for m in result["status"]["messages"] if m[0] == "execution_error"]
    assert msgs and "'pickscore' is not given by the loaded model 'ICT-HP'" in msgs[0][1]["exception_message"]
