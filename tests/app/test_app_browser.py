"""Real-browser test: headless Debian chromium driven by Playwright against `python -m icthp_cli app` on
loopback with tiny models. Checks the scores shown, the winner, the CSVs and the folder sandbox against
the core (`load_scorer`, `MultiScorer`) and `icthp_core.evaluation.stats`; saves screenshots of both modes.

Needs /usr/bin/chromium (run tests/app/setup_browser.sh). Screenshots go to $ICTHP_APP_SCREENSHOTS
(default: the test's tmp dir; the committed ones in docs/screenshots/ come from this test).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from icthp_core import MultiScorer, load_scorer
from icthp_core.evaluation.stats import win_rate

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # the fast tier: test_app_http.py

PROMPT = "a red balloon over a green field"
WAIT_MS = 60_000


def _reference(tiny_models, paths, prompts) -> dict[str, np.ndarray]:
    files = [str(p) for p in paths]
    ref = load_scorer(tiny_models["ict"], tiny_models["hp"]).score(files, prompts)
    ref["clip"] = MultiScorer(["clip"], {"clip": tiny_models["clip"]}).score(files, prompts)["clip"]
    return {m: v.numpy().astype(np.float64) for m, v in ref.items()}


def _wait_listed(pg, selector: str, stems: list[str]) -> None:
    """Wait until an upload box lists every file (Gradio shows the stem and extension separately)."""
    from playwright.sync_api import expect

    for stem in stems:
        expect(pg.locator(selector)).to_contain_text(stem, timeout=WAIT_MS)


def _download(pg, selector: str, dest: Path) -> Path:
    link = pg.locator(f"{selector} a[download]").first
    link.wait_for(timeout=WAIT_MS)
    with pg.expect_download(timeout=WAIT_MS) as dl:
        link.click()
    dl.value.save_as(dest)
    return dest


def test_compare_images_in_browser(page, server, tiny_models, make_scenes, tmp_path, shots):
    pg = page
    names = ["meadow.png", "dusk.png", "night.png", "snow.png", "lake.png"]
    paths = make_scenes(tmp_path / "up", names)
    junk = tmp_path / "up" / "notes.png"
    junk.write_text("these are notes, not pixels")
    pg.locator("#cmp-files input[type=file]").set_input_files([*map(str, paths), str(junk)])
    _wait_listed(pg, "#cmp-files", [Path(n).stem for n in names] + ["notes"])
    pg.fill("#cmp-prompt textarea", PROMPT)
    pg.click("#cmp-run")
    pg.wait_for_selector("#icthp-cards .icthp-card", timeout=WAIT_MS)
    pg.wait_for_selector("#cmp-chart img, #cmp-chart svg", timeout=WAIT_MS)

    ref = _reference(tiny_models, paths, PROMPT)
    cards = pg.locator("#icthp-cards .icthp-card")
    assert cards.count() == len(names)
    for i in range(len(names)):
        card = cards.nth(i)
        assert card.get_attribute("data-name") == names[i]
        for m in server["metrics"]:
            shown = float(card.locator(f'.icthp-score[data-metric="{m}"]').inner_text())
            assert shown == pytest.approx(ref[m][i], abs=5e-5 + 1e-7), (names[i], m)
    best = int(np.argmax(ref["ict_hp"]))
    winner = pg.locator("#icthp-cards .icthp-card.winner")
    assert winner.count() == 1 and winner.get_attribute("data-name") == names[best]
    status = pg.locator("#cmp-status").inner_text()
    assert f"Winner (ICT-HP): {names[best]}" in status
    assert "notes.png: not an image" in status
    assert ("Scoring paradox" in status) == (int(np.argmax(ref["clip"])) != best)

    csv = pd.read_csv(_download(pg, "#cmp-csv", tmp_path / "compare.csv"))
    assert csv["image"].tolist() == names and set(csv["prompt"]) == {PROMPT}
    for m, col in (("ict", "ICT"), ("hp", "HP"), ("ict_hp", "ICT-HP"), ("clip", "CLIP")):
        np.testing.assert_allclose(csv[col].to_numpy(), ref[m], rtol=1e-5, atol=1e-7)
    assert csv["ICT-HP rank"].tolist() == [int((ref["ict_hp"] > v).sum()) + 1 for v in ref["ict_hp"]]
    pg.screenshot(path=str(shots / "compare_images.png"), full_page=True)


def test_ab_models_in_browser(page, server, tiny_models, make_scenes, tmp_path, shots):
    pg = page
    names = [f"{i:03d}.png" for i in range(6)]
    prompts = [f"{c} balloon over a field" for c in ("red", "blue", "yellow", "white", "striped", "tiny")]
    a = make_scenes(tmp_path / "A", names)
    b = make_scenes(server["root"] / "lora_run", names, offset=3)
    index = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": prompts, "file": names}).to_csv(index, index=False)

    pg.get_by_role("tab", name="A/B models").click()
    pg.fill("#ab-name-A input, #ab-name-A textarea", "base")
    pg.fill("#ab-name-B input, #ab-name-B textarea", "lora")
    pg.locator("#ab-files-A input[type=file]").set_input_files([str(p) for p in a])
    _wait_listed(pg, "#ab-files-A", [Path(n).stem for n in names])
    pg.fill("#ab-dir-B input, #ab-dir-B textarea", "lora_run")
    pg.locator("#ab-index input[type=file]").set_input_files(str(index))
    _wait_listed(pg, "#ab-index", ["prompts"])
    pg.click("#ab-run")
    pg.wait_for_selector("#icthp-pairs .icthp-pair img", timeout=WAIT_MS)
    pg.wait_for_selector("#ab-chart img, #ab-chart svg", timeout=WAIT_MS)

    ra, rb = _reference(tiny_models, a, prompts), _reference(tiny_models, b, prompts)
    status = pg.locator("#ab-status").inner_text()
    w = win_rate(ra["ict_hp"], rb["ict_hp"])
    assert "6 pair(s) matched" in status
    assert f"base wins {w.rate:.1%} of pairs under ICT-HP (95% CI {w.low:.1%}–{w.high:.1%}" in status
    rows = {}
    for text in pg.locator("#ab-wins [role=row]").all_inner_texts():
        cells = text.split()
        rows[cells[0]] = cells
    for m, lab in (("ict_hp", "ICT-HP"), ("clip", "CLIP")):
        wm = win_rate(ra[m], rb[m])
        row = rows[lab]
        assert row[:5] == [lab, "6", str(wm.wins), str(wm.ties), str(wm.losses)], row
        assert [float(x) for x in row[5:8]] == pytest.approx([wm.rate, wm.low, wm.high], abs=5e-5)

    csv = pd.read_csv(_download(pg, "#ab-csv", tmp_path / "ab.csv"))
    assert csv["prompt"].tolist() == prompts and csv["b_file"].tolist() == names
    np.testing.assert_allclose(csv["base ICT-HP"].to_numpy(), ra["ict_hp"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(csv["lora CLIP"].to_numpy(), rb["clip"], rtol=1e-5, atol=1e-7)
    pg.screenshot(path=str(shots / "ab_models.png"), full_page=True)

    # A folder outside the configured root is refused with a message, nothing is read.
    pg.fill("#ab-dir-B input, #ab-dir-B textarea", str(tmp_path / "A"))
    pg.click("#ab-run")
    pg.get_by_text("outside the allowed roots").first.wait_for(timeout=WAIT_MS)


def test_generate_tab_explains_requirements(page):
    page.get_by_role("tab", name="Generate: base vs LoRA").click()
    note = page.locator("#gen-note")
    note.wait_for(timeout=WAIT_MS)
    text = note.inner_text()
    assert "--base-model" in text and "--lora" in text
    assert ("CUDA GPU" in text) == (not torch.cuda.is_available())
