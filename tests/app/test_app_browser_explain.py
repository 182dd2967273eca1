"""The Explain view in headless Chromium: upload, pick the winner, explain, check heatmaps and word bars beside the
runner-up, save a screenshot (docs/screenshots/explain_view.png comes from this test).

The occlusion grid is the slider's minimum (2 x 2: 5 image passes per metric instead of 50) since what is checked, a
heatmap per metric and method, does not depend on its size; with $ICTHP_APP_SCREENSHOTS set (refreshing the docs'
screenshot) the default 7 x 7 is kept."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from test_app_browser import PROMPT, WAIT_MS, _reference, _wait_listed

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.mark.slow  # measured: over the 10 s budget (tests/durations.json)
def test_explain_view_in_browser(page, server, tiny_models, make_scenes, tmp_path, shots):
    pg = page
    names = ["meadow.png", "dusk.png", "night.png"]
    paths = make_scenes(tmp_path / "up", names)
    pg.locator("#cmp-files input[type=file]").set_input_files([str(p) for p in paths])
    _wait_listed(pg, "#cmp-files", [Path(n).stem for n in names])
    pg.fill("#cmp-prompt textarea", PROMPT)
    ref = _reference(tiny_models, paths, PROMPT)
    best = int(np.argmax(ref["ict_hp"]))
    second = int(np.argsort(-ref["ict_hp"])[1])

    pg.locator("#exp-box").get_by_text("Explain a score").first.click()
    pg.locator("#exp-pick input").click()
    pg.get_by_role("option", name=names[best]).click()
    pg.locator("#exp-methods").get_by_label("occlusion").check()
    if not os.environ.get("ICTHP_APP_SCREENSHOTS"):
        grid = pg.locator("#exp-grid input[type=number]")
        grid.fill("2")
        grid.press("Enter")
        assert grid.input_value() == "2"
    pg.click("#exp-run")
    pg.wait_for_selector("#icthp-explain .icthp-exp-col", timeout=WAIT_MS)

    cols = pg.locator("#icthp-explain .icthp-exp-col")
    assert cols.count() == 2
    assert cols.nth(0).get_attribute("data-name") == names[best] and cols.nth(0).get_attribute("data-role") == "picked"
    assert cols.nth(1).get_attribute("data-name") == names[second]
    assert cols.nth(1).get_attribute("data-role") == "runner-up"
    for c in range(2):
        col = cols.nth(c)
        for m in ("ict", "hp", "ict_hp", "clip"):
            for method in ("relevance", "occlusion"):
                img = col.locator(f'.icthp-heat[data-metric="{m}"][data-method="{method}"] img')
                assert img.count() == 1 and img.evaluate("e => e.naturalWidth") > 0, (m, method)
        for m in ("ict", "ict_hp", "clip"):  # prompt metrics only: HP reads no prompt
            words = col.locator(f'.icthp-words[data-metric="{m}"] .icthp-word')
            assert {w.get_attribute("data-word") for w in words.all()} == set(PROMPT.split())
        assert col.locator('.icthp-words[data-metric="hp"]').count() == 0
    status = pg.locator("#exp-status").inner_text()
    assert f"beside the runner-up {names[second]}" in status and "grid² + 1 image passes" in status
    pg.locator("#exp-view").scroll_into_view_if_needed()
    pg.screenshot(path=str(shots / "explain_view.png"), full_page=True)
