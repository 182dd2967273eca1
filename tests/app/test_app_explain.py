"""The app's Explain view without a browser: the pick, its partner, heatmaps and word bars from the shared pool."""

from __future__ import annotations

import numpy as np
import pytest

PROMPT = "a red balloon over a green field"


@pytest.fixture(scope="module")
def controller(tiny_models):
    from icthp_app.controller import Controller
    from icthp_app.pool import ScorerPool

    pool = ScorerPool(["ict", "hp", "ict_hp", "clip"], sources=tiny_models, device="cpu")
    return Controller(pool)


def test_partner_is_runner_up_or_winner():
    from icthp_app.explain_view import partner

    assert partner([0.1, 0.9, 0.5], 1) == (2, "runner-up")
    assert partner([0.1, 0.9, 0.5], 0) == (1, "winner")


@pytest.mark.slow
def test_explain_view_shows_pick_beside_runner_up(controller, make_scenes, tmp_path):
    from icthp_app.explain_view import ExplainPanel
    from icthp_app.logic import InputError

    names = ["meadow.png", "dusk.png", "night.png"]
    paths = make_scenes(tmp_path, names)
    panel = ExplainPanel(controller)
    assert panel.choices([str(p) for p in paths]) == names
    scores = controller.pool.score(paths, PROMPT, ["ict_hp"])["ict_hp"]
    best = int(np.argmax(scores))
    r = panel.run([str(p) for p in paths], PROMPT, ["ict_hp", "clip"], names[best], ["relevance"], 3)
    second = names[int(np.argsort(-scores)[1])]
    assert f'data-name="{names[best]}" data-role="picked"' in r.html
    assert f'data-name="{second}" data-role="runner-up"' in r.html
    for m in ("ict_hp", "clip"):
        assert r.html.count(f'class="icthp-heat" data-metric="{m}" data-method="relevance"') == 2
        assert r.html.count(f'class="icthp-words" data-metric="{m}"') == 2
    assert 'data-word="balloon"' in r.html and "beside the runner-up" in r.status_md
    ex = r.explanations[names[best]][0]
    assert ex.scores["ict_hp"] == pytest.approx(float(scores[best]), abs=1e-6)
    with pytest.raises(InputError, match="Pick one"):
        panel.run([str(p) for p in paths], PROMPT, ["ict_hp"], "other.png", ["relevance"], 3)
