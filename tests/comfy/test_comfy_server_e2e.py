"""End to end: a real ComfyUI 0.3.75 server on loopback loads the pack from custom_nodes and runs the
API-format example workflow with tiny models in <base>/models/icthp (POST /prompt -> /history)."""

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.comfyui]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "comfyui" / "check_install_api.json"
RUN_TIMEOUT = 180


def _get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def _post(url: str, data: dict, timeout: float = 10):
    req = urllib.request.Request(url, data=json.dumps(data).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _run(url: str, workflow: dict) -> dict:
    status, body = _post(f"{url}/prompt", {"prompt": workflow, "client_id": "icthp-test"})
    assert status == 200, body
    return _wait(url, body["prompt_id"])


def _wait(url: str, pid: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        hist = _get(f"{url}/history/{pid}")
        if pid in hist and hist[pid].get("status", {}).get("completed") is not None:
            if hist[pid]["status"].get("status_str") in ("success", "error"):
                return hist[pid]
        time.sleep(0.1)  # poll: the prompt is done when its history says so
    pytest.fail(f"prompt {pid} did not finish in {RUN_TIMEOUT}s")


def _example(ict="ict", hp="hp") -> dict:
    wf = json.loads(EXAMPLE.read_text())
    wf["6"]["inputs"].update({"ict_source": ict, "hp_source": hp})
    return wf


def test_pack_registers_in_server(server):
    url, base = server
    info = _get(f"{url}/object_info")
    for node in (
        "ICTHPLoader",
        "ICTHPScore",
        "ICTHPBestOfN",
        "ICTHPLoraLoader",
        "ICTHPTextEncoderSwap",
        "ICTHPCLIPVision",
        "ICTHPEarlyBestOfN",
        "ICTHPRewardMix",
        "ICTHPSelect",
        "ICTHPSaveWithScores",
        "ICTHPModelManager",
        "ICTHPExplain",
    ):
        assert node in info, node
    # the dropdowns list the model folders of <base>/models/icthp
    entry = info["ICTHPLoader"]["input"]["required"]["ict_source"]
    options = entry[1]["options"] if entry[0] == "COMBO" else entry[0]
    assert options == ["ict", "8y/ICT"]
    lines = [
        ln
        for ln in (base / "server.log").read_text().splitlines()
        if ln.rstrip().endswith("custom_nodes/icthp") or "custom_nodes/icthp " in ln
    ]
    assert lines and not any("IMPORT FAILED" in ln for ln in lines), lines


def test_example_workflow_runs(server):
    url, base = server
    result = _run(url, _example())
    assert result["status"]["status_str"] == "success", result["status"]
    outputs = result["outputs"]
    summary = outputs["8"]["text"][0]
    assert summary.startswith("ict_hp: kept 2 of 3")
    table = outputs["7"]["text"][0]
    assert table.splitlines()[0].split()[:4] == ["#", "ict_hp", "ict", "hp"]
    saved = outputs["9"]["images"]
    assert len(saved) == 2 and all((base / "output" / s["filename"]).is_file() for s in saved)


def test_bad_inputs_report_errors_and_server_survives(server):
    url, _ = server
    # a model folder that does not exist: rejected by validation or reported by the loader, naming the folder
    status, body = _post(f"{url}/prompt", {"prompt": _example(ict="not_there")})
    if status == 200:
        result = _wait(url, body["prompt_id"])
        assert result["status"]["status_str"] == "error"
        errors = [m for m in result["status"]["messages"] if m[0] == "execution_error"]
        assert errors and "'not_there' not found in models/icthp" in errors[0][1]["exception_message"]
    else:
        assert status == 400 and "6" in body.get("node_errors", {})
    # execution error: one prompt per line with the wrong number of lines
    wf = _example()
    wf["7"]["inputs"].update({"prompt": "a\nb", "one_prompt_per_line": True})
    result = _run(url, wf)
    assert result["status"]["status_str"] == "error"
    errors = [m for m in result["status"]["messages"] if m[0] == "execution_error"]
    assert errors and "2 non-empty lines for 3 images" in errors[0][1]["exception_message"]
    # the server is still serving and runs the next prompt
    assert _run(url, _example())["status"]["status_str"] == "success"


THIRD_PARTY = {"IPAdapterModelLoader", "IPAdapterAdvanced"}  # ComfyUI_IPAdapter_plus (not installed in tests)
UI_EXAMPLES = sorted(p for p in (ROOT / "examples" / "comfyui").glob("*.json") if not p.name.endswith("_api.json"))


def _widget_names(spec: dict) -> list[str]:
    names = []
    for section in ("required", "optional"):
        for name, s in spec["input"].get(section, {}).items():
            t, opts = s[0], (s[1] if len(s) > 1 else {})
            if isinstance(t, list) or (
                t in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") and not opts.get("forceInput")
            ):
                names.append(name)
                if opts.get("control_after_generate"):
                    names.append(f"{name}:control_after_generate")
                if opts.get("image_upload"):
                    names.append(f"{name}:upload")
    return names


@pytest.mark.parametrize("path", UI_EXAMPLES, ids=lambda p: p.name)
def test_ui_examples_match_the_running_comfyui(server, path):
    """Every UI-format example only uses nodes, widgets and socket types the server (or IPAdapter_plus) has."""
    url, _ = server
    info = _get(f"{url}/object_info")
    wf = json.loads(path.read_text())
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(UI_EXAMPLES) >= 5
    for n in wf["nodes"]:
        if n["type"] in THIRD_PARTY:
            continue
        assert n["type"] in info, f"{path.name}: unknown node {n['type']}"
        spec = info[n["type"]]
        assert len(n["widgets_values"]) == len(_widget_names(spec)), (path.name, n["type"])
        if n["type"].startswith("ICTHP"):  # fixed option lists of our nodes must hold the saved values
            for name, value in zip(_widget_names(spec), n["widgets_values"], strict=True):
                s = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}.get(name)
                if s and s[0] == "COMBO" and name in ("model", "metric", "device", "dtype"):
                    assert value in s[1]["options"], (path.name, n["type"], name, value)
    for link_id, src, src_slot, dst, dst_slot, typ in wf["links"]:
        out_types = info[nodes[src]["type"]]["output"] if nodes[src]["type"] in info else None
        if out_types is not None:
            assert out_types[src_slot] == typ, (path.name, link_id)
        assert nodes[dst]["inputs"][dst_slot]["type"] == typ and nodes[dst]["inputs"][dst_slot]["link"] == link_id


def _load(name: str) -> dict:
    return json.loads((ROOT / "examples" / "comfyui" / name).read_text())


def _local_sources(wf: dict) -> dict:
    for node in wf.values():
        if node["class_type"] == "ICTHPLoader":
            node["inputs"].update({"ict_source": "ict", "hp_source": "hp"})
    return wf


def test_early_best_of_n_example_runs(server):
    """The SDXL example with its checkpoint loader and text encoders swapped for the test pack's tiny SD3."""
    url, base = server
    wf = _local_sources(_load("early_best_of_n_sdxl_api.json"))
    swap = {("2", 0): ["1", 1], ("3", 0): ["1", 2], ("1", 2): ["1", 3]}
    for node in wf.values():
        for k, v in node["inputs"].items():
            if isinstance(v, list):
                node["inputs"][k] = swap.get((v[0], v[1]), v)
    del wf["2"], wf["3"]
    wf["1"] = {"class_type": "ICTHPTestTinySD3", "inputs": {"seed": 3}}
    wf["4"]["inputs"].update({"width": 64, "height": 64})
    wf["6"]["inputs"].update({"steps": 5, "n": 4, "k": 2})
    result = _run(url, wf)
    assert result["status"]["status_str"] == "success", result["status"]
    summary = result["outputs"]["6"]["text"][0]
    assert summary.startswith("early best-of-4: scored x0 at step 3/5") and "16 of 20 candidate-steps" in summary
    saved = result["outputs"]["7"]["images"]
    assert len(saved) == 2 and len(result["outputs"]["8"]["images"]) == 2  # 2 kept, 2 pruned previews
    from icthp_core.data.metadata import read_record

    rec = read_record(base / "output" / saved[0]["subfolder"] / saved[0]["filename"])
    assert rec["model"] == "ICT-HP" and set(rec["scores"]) == {"ict_hp", "ict", "hp"}


def test_select_and_save_example_runs(server):
    url, base = server
    result = _run(url, _local_sources(_load("select_and_save_api.json")))
    assert result["status"]["status_str"] == "success", result["status"]
    out = result["outputs"]
    assert out["9"]["text"][0].startswith("weighted: kept 2 of 3, threshold -10.0")
    assert len(out["10"]["images"]) == 2  # the list output ran the save node once per kept image
    assert out["11"]["text"][0].endswith("\n3 present")  # the tiny ICT and HP files in models/icthp


def test_example_workflow_with_k_at_least_the_batch_runs(server):
    """Nothing rejected: the PreviewImage fed by rejected_images is skipped (ExecutionBlocker), the run succeeds."""
    url, _ = server
    wf = _example()
    wf["8"]["inputs"]["k"] = 3  # the example's batch has 3 images
    result = _run(url, wf)
    assert result["status"]["status_str"] == "success", result["status"]
    assert result["outputs"]["8"]["text"][0].startswith("ict_hp: kept 3 of 3")
    assert len(result["outputs"]["9"]["images"]) == 3 and "10" not in result["outputs"]


def test_select_and_save_example_with_nothing_kept_runs(server):
    """on_empty=empty and nothing passes: the save node is skipped (ExecutionBlocker), the run succeeds."""
    url, _ = server
    wf = _local_sources(_load("select_and_save_api.json"))
    wf["9"]["inputs"].update({"threshold": 1e6, "on_empty": "empty"})
    result = _run(url, wf)
    assert result["status"]["status_str"] == "success", result["status"]
    assert result["outputs"]["9"]["text"][0].startswith("weighted: kept 0 of 3") and "10" not in result["outputs"]


def _tiny_early(n: int, k: int, denoise: float = 1.0) -> dict:
    wf = _local_sources(_load("early_best_of_n_sdxl_api.json"))
    swap = {("2", 0): ["1", 1], ("3", 0): ["1", 2], ("1", 2): ["1", 3]}
    for node in wf.values():
        for key, v in node["inputs"].items():
            if isinstance(v, list):
                node["inputs"][key] = swap.get((v[0], v[1]), v)
    del wf["2"], wf["3"]
    wf["1"] = {"class_type": "ICTHPTestTinySD3", "inputs": {"seed": 3}}
    wf["4"]["inputs"].update({"width": 64, "height": 64})
    wf["6"]["inputs"].update({"steps": 5, "n": n, "k": k, "denoise": denoise})
    return wf


@pytest.mark.parametrize(("n", "k", "denoise"), [(1, 1, 1.0), (3, 4, 1.0), (3, 1, 0.0)])
def test_early_best_of_n_example_edge_cases_run(server, n, k, denoise):
    """n=1 or k >= n: nothing pruned, the PreviewImage of pruned previews is skipped; denoise=0: no sampling (the
    latent unchanged, as KSampler), the candidates are scored and kept as they are."""
    url, _ = server
    result = _run(url, _tiny_early(n, k, denoise))
    assert result["status"]["status_str"] == "success", result["status"]
    summary = result["outputs"]["6"]["text"][0]
    kept = min(n, k)
    assert summary.startswith(f"early best-of-{n}: scored x0 at step") and f"kept {kept};" in summary
    assert len(result["outputs"]["7"]["images"]) == kept
    assert ("8" in result["outputs"]) == (kept < n)
    if denoise == 0.0:
        assert "step 0/0" in summary and "0 of 0 candidate-steps" in summary
