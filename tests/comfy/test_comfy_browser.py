"""The ComfyUI web frontend (1.32.9, headless Chromium) with the pack: the UI-format examples load and
convert to API prompts, and the pack's web extension shows the node results as text."""

import json
from pathlib import Path

import pytest

pytestmark = [pytest.mark.comfyui, pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "comfyui"
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def page(server, chromium):
    """A page of the session's Chromium on the ComfyUI frontend, once the pack's extension is registered."""
    url, _ = server
    pg = chromium.new_page()
    try:
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(url)
        pg.wait_for_function("() => window.app && window.app.graph && window.app.extensionManager")
        pg.wait_for_function(
            "() => window.app.extensionManager && [...(window.app.extensions || [])]"
            ".some(e => e.name === 'ICTHP.ResultText')"
        )
        yield pg
    finally:
        pg.context.close()


def test_web_extension_shows_results(page):
    wf = json.loads((EXAMPLES / "check_install_api.json").read_text())
    wf["6"]["inputs"].update({"ict_source": "ict", "hp_source": "hp"})
    page.evaluate("(wf) => window.app.loadApiJson(wf, 'check_install_api.json')", wf)
    page.evaluate("() => window.app.queuePrompt(0)")
    text_of = """(type) => { const n = window.app.graph._nodes.find(n => n.type === type);
        const w = n && (n.widgets || []).find(w => w.name === 'icthp_result'); return w ? w.value : null; }"""
    page.wait_for_function(f"() => (({text_of})('ICTHPBestOfN') || '').includes('kept 2 of 3')")
    page.wait_for_function(f"() => (({text_of})('ICTHPScore') || '').includes('mean')")
    table = page.evaluate(f"({text_of})('ICTHPScore')")
    assert table.splitlines()[0].split()[:4] == ["#", "ict_hp", "ict", "hp"] and len(table.splitlines()) == 5
    # the result box is not saved with the workflow
    saved = page.evaluate("() => window.app.graph.serialize()")
    best = next(n for n in saved["nodes"] if n["type"] == "ICTHPBestOfN")
    assert not any(isinstance(v, str) and "kept 2 of 3" in v for v in best["widgets_values"])


@pytest.mark.parametrize(
    "path", sorted(p for p in EXAMPLES.glob("*.json") if not p.name.endswith("_api.json")), ids=lambda p: p.name
)
def test_ui_examples_load_and_convert_to_api(page, path):
    wf = json.loads(path.read_text())
    page.evaluate("(wf) => window.app.loadGraphData(wf, true, true, 'example')", wf)
    prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    for node in wf["nodes"]:
        if node["type"].startswith("ICTHP"):
            inputs = prompt[str(node["id"])]["inputs"]
            assert prompt[str(node["id"])]["class_type"] == node["type"]
            names = page.evaluate(
                "(id) => (window.app.graph.getNodeById(id).widgets || []).map(w => w.name)", node["id"]
            )
            # a seed's "control after generate" widget is saved in widgets_values but is no prompt input
            expected = {k: v for k, v in zip(names, node["widgets_values"], strict=False) if k in inputs}
            assert {k: v for k, v in inputs.items() if not isinstance(v, list)} == expected, node["type"]
            linked = {i["name"] for i in node["inputs"] if i["link"] is not None}
            assert linked == {k for k, v in inputs.items() if isinstance(v, list)}, node["type"]
