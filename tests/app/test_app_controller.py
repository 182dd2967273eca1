"""Controller + ScorerPool: with a fake scorer (loading/sharing behaviour) and with tiny real models
(scores equal the core's `load_scorer` / `MultiScorer` for the same images)."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from icthp_app.controller import Controller
from icthp_app.logic import InputError
from icthp_app.pool import ScorerPool

from icthp_core import MultiScorer, load_scorer
from icthp_core.evaluation.stats import win_rate


class FakeScorer:
    """Score = a per-metric function of the image file's size and the prompt length."""

    def __init__(self, metrics, sources, device, dtype, calls):
        self.metrics = metrics
        calls.append((tuple(metrics), sources))
        time.sleep(0.05)

    def score(self, images, prompts):
        out = {}
        for k, m in enumerate(self.metrics):
            v = [
                ((hash(str(getattr(i, "name", i))) % 1000) / 1000 + k + len(p))
                for i, p in zip(images, prompts, strict=True)
            ]
            out[m] = torch.tensor(v, dtype=torch.float32)
        return out


def fake_pool(metrics, calls, batch_size=2):
    return ScorerPool(
        metrics,
        {"ict": "I", "hp": "H", "clip": "C"},
        batch_size=batch_size,
        factory=lambda m, s, d, t: FakeScorer(m, s, d, t, calls),
    )


def test_pool_groups_and_loads_each_group_once_across_threads(tmp_path, make_scenes):
    calls: list = []
    pool = fake_pool(["ict", "hp", "ict_hp", "clip", "pickscore"], calls)
    assert pool.groups(["hp", "clip"]) == [("ict", "hp", "ict_hp"), ("clip",)]
    with pytest.raises(InputError, match="aesthetic"):
        pool.groups(["aesthetic"])
    imgs = make_scenes(tmp_path, [f"{i}.png" for i in range(5)])
    results = []
    threads = [threading.Thread(target=lambda: results.append(pool.score(imgs, "p", ["hp", "clip"]))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(c[0] for c in calls) == [("clip",), ("ict", "hp", "ict_hp")]  # one load per group
    assert dict(calls)[("ict", "hp", "ict_hp")] == {"ict": "I", "hp": "H"}
    assert dict(calls)[("clip",)] == {"clip": "C"}
    assert all(np.array_equal(r["clip"], results[0]["clip"]) for r in results)
    assert list(results[0]) == ["hp", "clip"] and results[0]["hp"].shape == (5,)
    # batches (size 2) concatenate back in order
    ref = FakeScorer(["ict", "hp"], None, None, None, []).score(imgs, ["p"] * 5)["hp"].numpy()
    np.testing.assert_allclose(results[0]["hp"], ref, rtol=1e-6)
    steps = []
    pool.score(imgs, "p", ["ict_hp"], lambda f, d: steps.append(f))
    assert steps[-1] == pytest.approx(1.0) and steps == sorted(steps)


def test_background_warm_up_loads_the_defaults_once_and_a_failed_load_is_retried(tmp_path, make_scenes, caplog):
    calls: list = []
    pool = fake_pool(["ict", "hp", "ict_hp", "clip", "pickscore"], calls)
    warm = pool.preload_in_background(["ict_hp", "clip"])
    first = pool.scorer(("ict", "hp", "ict_hp"))  # a request meanwhile waits for the same load
    warm.join(10)
    assert not warm.is_alive() and sorted(pool.loaded()) == [("clip",), ("ict", "hp", "ict_hp")]
    assert sorted(c[0] for c in calls) == [("clip",), ("ict", "hp", "ict_hp")]  # one load each, pickscore none
    assert pool.scorer(("ict", "hp", "ict_hp")) is first

    tries: list = []

    def broken(m, s, d, t):
        tries.append(m)
        raise OSError("weights not found: /nope")

    pool = ScorerPool(["clip"], {"clip": "/nope"}, factory=broken)
    pool.preload_in_background().join(10)
    assert "loading models in the background failed: weights not found: /nope" in caplog.text
    with pytest.raises(OSError, match="/nope"):  # the first request loads again and shows the error
        pool.score(make_scenes(tmp_path, ["a.png", "b.png"]), "p", ["clip"])
    assert len(tries) == 2 and pool.loaded() == []


def test_compare_with_fake_scorer_validation(tmp_path, make_scenes):
    pool = fake_pool(["ict", "hp", "ict_hp", "clip"], [])
    c = Controller(pool, out_dir=tmp_path / "out")
    imgs = make_scenes(tmp_path / "in", ["a.png", "b.png"])
    junk = tmp_path / "in" / "junk.png"
    junk.write_bytes(b"\x00" * 50)
    r = c.compare([str(p) for p in [*imgs, junk]], "x", ["ict_hp", "clip"])
    assert r.names == ["a.png", "b.png"] and "junk.png: not an image" in r.status_md
    with pytest.raises(InputError, match="prompt"):
        c.compare([str(p) for p in imgs], "  ", ["ict"])
    with pytest.raises(InputError, match="metric"):
        c.compare([str(p) for p in imgs], "x", [])
    with pytest.raises(InputError, match="at least 2"):
        c.compare([str(imgs[0])], "x", ["ict"])


@pytest.fixture(scope="module")
def core_scorer(tiny_models):
    """The core's ICT-HP scorer on the tiny models, loaded once: the reference the app's scores must match."""
    return load_scorer(tiny_models["ict"], tiny_models["hp"])


def test_compare_matches_core_scores(tiny_models, core_scorer, tmp_path, make_scenes):
    pool = ScorerPool(["ict", "hp", "ict_hp", "clip"], tiny_models)
    c = Controller(pool, out_dir=tmp_path / "out")
    imgs = make_scenes(tmp_path / "in", [f"s{i}.png" for i in range(4)])
    prompt = "a red balloon over a field"
    r = c.compare([str(p) for p in imgs], prompt, ["ict", "hp", "ict_hp", "clip"])
    ref = core_scorer.score([str(p) for p in imgs], prompt)
    ref["clip"] = MultiScorer(["clip"], {"clip": tiny_models["clip"]}).score([str(p) for p in imgs], prompt)["clip"]
    for m in ("ict", "hp", "ict_hp", "clip"):
        np.testing.assert_allclose(r.scores[m], ref[m].numpy(), rtol=1e-5, atol=1e-6)
    best = int(torch.argmax(ref["ict_hp"]))
    assert f"Winner (ICT-HP): {imgs[best].name}" in r.status_md
    paradox = int(torch.argmax(ref["clip"])) != best
    assert ("Scoring paradox" in r.status_md) == paradox
    assert r.cards_html.count('class="icthp-card winner"') == 1
    csv = pd.read_csv(r.csv_path)
    assert csv["image"].tolist() == [p.name for p in imgs] and set(csv["prompt"]) == {prompt}
    np.testing.assert_allclose(csv["ICT-HP"], ref["ict_hp"].numpy(), rtol=1e-6)
    assert len(pool.loaded()) == 2
    c.compare([str(p) for p in imgs[:2]], prompt, ["hp"])
    assert len(pool.loaded()) == 2  # nothing reloaded


def test_ab_with_folders_index_and_roots(tiny_models, core_scorer, tmp_path, make_scenes):
    root = tmp_path / "runs"
    names = [f"{i:03d}.png" for i in range(5)]
    a = make_scenes(root / "A", names)
    b = make_scenes(root / "B", names, offset=3)
    (root / "B" / "readme.png").write_text("oops")  # not an image: rejected, not fatal
    idx = tmp_path / "idx.json"
    prompts = [f"prompt {i}" for i in range(5)]
    idx.write_text(pd.Series(dict(zip(prompts, names, strict=True))).to_json())
    pool = ScorerPool(["ict", "hp", "ict_hp"], tiny_models)
    c = Controller(pool, ab_roots=[root], out_dir=tmp_path / "out")
    r = c.compare_ab(None, None, "A", str(root / "B"), str(idx), None, ["ict_hp", "hp"], a_name="base", b_name="lora")
    ra, rb = core_scorer.score([str(p) for p in a], prompts), core_scorer.score([str(p) for p in b], prompts)
    np.testing.assert_allclose(r.frame["base ICT-HP"], ra["ict_hp"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(r.frame["lora HP"], rb["hp"].numpy(), rtol=1e-5)
    w = win_rate(ra["ict_hp"].numpy(), rb["ict_hp"].numpy())
    row = r.wins.set_index("metric").loc["ICT-HP"]
    assert row["A win rate"] == pytest.approx(w.rate) and row["CI high"] == pytest.approx(w.high, abs=1e-5)
    assert "B/readme.png: not an image" in r.status_md and "5 pair(s)" in r.status_md
    csv = pd.read_csv(r.csv_path)
    assert csv["prompt"].tolist() == prompts and "lora ICT-HP" in csv.columns
    with pytest.raises(InputError, match="outside the allowed roots"):
        c.compare_ab(None, None, "A", str(tmp_path), str(idx), None, ["hp"])
    with pytest.raises(InputError, match="disabled"):
        Controller(pool).compare_ab(None, None, "A", "B", None, "p", ["hp"])
    # uploads: sidecar prompts, default prompt
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "000.txt").write_text("from sidecar")
    r2 = c.compare_ab(
        [*map(str, a[:2]), str(tmp_path / "up" / "000.txt")], [str(p) for p in b[:2]], "", "", None, "shared", ["hp"]
    )
    assert r2.frame["prompt"].tolist() == ["from sidecar", "shared"]
    with pytest.raises(InputError, match="over the limit"):
        Controller(pool, max_pairs=3).compare_ab([str(p) for p in a], [str(p) for p in b], "", "", None, "p", ["hp"])


def test_compare_shows_scores_stored_in_png_metadata(tmp_path, make_scenes):
    from icthp_app.render import cards_html
    from PIL import Image, PngImagePlugin

    from icthp_core.data.metadata import KEY, save_png
    from icthp_core.scoring.records import build_record

    pool = fake_pool(["ict", "hp", "ict_hp"], [])
    c = Controller(pool, out_dir=tmp_path / "out")
    plain, src, bad, odd = make_scenes(tmp_path / "in", ["plain.png", "src.png", "bad.png", "odd.png"])
    record = build_record({"ict_hp": 0.71, "weighted": -1.25}, "p", "ICT-HP", {"ict": "8y/ICT", "hp": "8y/HP"}, "batch")
    record["metrics"]["ict_hp"]["label"] = "ICT-HP v0"  # the stored label is shown, not the registry's
    tagged = tmp_path / "in" / "tagged.png"
    with Image.open(src) as im:
        save_png(im, tagged, record)
    for path, text in ((bad, "{not json"), (odd, '{"scores": {"ict": "high"}}')):
        info = PngImagePlugin.PngInfo()
        info.add_text(KEY, text)
        with Image.open(path) as im:
            im.load()
            im.save(path, pnginfo=info)

    r = c.compare([str(p) for p in (plain, tagged, bad, odd)], "p", ["ict_hp", "hp"])
    assert sorted(r.scores) == ["hp", "ict_hp"]  # live scores only
    assert [s is not None for s in r.stored] == [False, True, False, False]
    assert r.stored[1].scores == {"ict_hp": 0.71, "weighted": -1.25}
    stored_cols = ["stored ICT-HP v0", "stored weighted", "stored model", "stored sources", "stored normalize"]
    assert [col for col in r.table.columns if col.startswith("stored")] == stored_cols
    csv = pd.read_csv(r.csv_path)
    assert csv["image"].tolist() == ["plain.png", "tagged.png", "bad.png", "odd.png"]
    assert csv["stored ICT-HP v0"].isna().tolist() == [True, False, True, True]
    assert csv.loc[1, "stored ICT-HP v0"] == 0.71 and csv["stored model"].isna().sum() == 3
    assert csv.loc[1, "stored weighted"] == -1.25 and csv.loc[1, "stored model"] == "ICT-HP"
    assert csv.loc[1, "stored sources"] == "hp=8y/HP; ict=8y/ICT" and csv.loc[1, "stored normalize"] == "batch"
    np.testing.assert_allclose(csv["ICT-HP"], r.scores["ict_hp"], rtol=1e-6)  # live column untouched
    assert r.cards_html.count('class="icthp-stored"') == 1
    card = r.cards_html.split('data-name="tagged.png"')[1].split('class="icthp-card')[0]
    assert "ICT-HP v0 0.7100" in card and "weighted -1.2500" in card and "hp=8y/HP; ict=8y/ICT" in card
    assert "1 image(s) carry scores stored" in r.status_md

    # images without metadata: nothing extra anywhere
    r0 = c.compare([str(plain), str(src)], "p", ["ict_hp"])
    assert r0.stored == [None, None] and list(r0.table.columns) == ["image", "ICT-HP", "ICT-HP rank"]
    assert list(pd.read_csv(r0.csv_path).columns) == ["image", "prompt", "ICT-HP", "ICT-HP rank"]
    assert "icthp-stored" not in r0.cards_html and "stored" not in r0.status_md
    assert r0.cards_html == cards_html(r0.names, r0.paths, r0.scores)


def test_compare_with_thousands_of_stored_metrics_and_nested_json(tmp_path, make_scenes):
    """3,000 stored metrics once took 14.9 s (quadratic column insertion); nested stored JSON raised RecursionError
    and failed the comparison of the valid images. Now linear; that image's stored scores are ignored with a note."""
    from icthp_app.stored import read_stored, stored_columns
    from PIL import Image, PngImagePlugin

    from icthp_core.data.metadata import KEY, save_png
    from icthp_core.scoring.records import build_record

    c = Controller(fake_pool(["ict", "hp", "ict_hp"], []), out_dir=tmp_path / "out")
    a, b, many, nested, huge = make_scenes(tmp_path / "in", ["a.png", "b.png", "many.png", "nested.png", "huge.png"])
    with Image.open(many) as im:
        save_png(im, many, build_record({f"m{i}": i / 1000 for i in range(3000)}, "p", "ICT-HP", {}, None))
    for path, text in (
        (nested, '{"scores": {"ict_hp": ' + "[" * 50_000 + "]" * 50_000 + "}}"),
        (huge, '{"scores": {"ict_hp": 1' + "0" * 400 + "}}"),  # a float overflow
    ):
        info = PngImagePlugin.PngInfo()
        info.add_text(KEY, text)
        with Image.open(path) as im:
            im.load()
            im.save(path, pnginfo=info)

    records = [read_stored(p) for p in (a, many, b)]
    with warnings.catch_warnings():  # the frame is built at once: column-by-column insertion (quadratic) warns
        warnings.simplefilter("error", pd.errors.PerformanceWarning)
        cols = stored_columns(records)
    assert cols.shape == (3, 3002)
    assert cols.loc[1, "stored m2999"] == 2.999 and np.isnan(cols.loc[0, "stored m0"])

    r = c.compare([str(p) for p in (a, b, many, nested, huge)], "p", ["ict_hp"])
    assert len(r.scores["ict_hp"]) == 5  # every image scored live
    assert [s is not None for s in r.stored] == [False, False, True, False, False]
    notes = r.status_md.split("Stored metadata — ")[1].split("; ")
    assert len(notes) == 2 and notes[0].startswith("nested.png: stored scores ignored (") and "nested" in notes[0]
    assert notes[1].startswith("huge.png: stored scores ignored (")
    assert sum(col.startswith("stored m") and col[8:].isdigit() for col in r.table.columns) == 3000
