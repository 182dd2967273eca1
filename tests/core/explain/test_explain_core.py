"""icthp_core.explain against hand-computed references on the tiny ICT/HP models."""

from __future__ import annotations

import pytest
import torch

from icthp_core.explain import ExplainError, explain
from icthp_core.explain.attention import recording_attention, relevance, rollout, vision_tower
from icthp_core.explain.common import image_tensor, metric_fn
from icthp_core.explain.curves import auc, evaluate
from icthp_core.explain.regions import cell_bounds, occlusion, relevance_map
from icthp_core.explain.words import integrated_gradients, map_words, word_contributions
from icthp_core.scoring.text import tokenize

PROMPT = "a red cube, photo"


def test_words_map_to_their_tokens():
    words = map_words("a red-cube, photo")
    assert [w.text for w in words] == ["a", "red-cube", "photo"]
    ids = tokenize("a red-cube, photo")[0]
    for w in words:  # each word's tokens are exactly the tokens of the word on its own
        alone = tokenize(w.text)[0]
        n = int((alone != 0).sum()) - 2
        assert ids[w.tok_start : w.tok_end].tolist() == alone[1 : 1 + n].tolist()
    assert words[0].tok_start == 1
    assert words[1].tok_end < words[2].tok_start  # the comma's token sits between


def test_removal_drops_match_prompts_written_by_hand(scorer, wide_image):
    pixels = scorer.preprocess([wide_image])
    out = word_contributions(scorer, pixels, PROMPT, "ict_hp", ig_steps=None)
    by_hand = {"a": "red cube, photo", "red": "a cube, photo", "cube": "a red , photo", "photo": "a red cube,"}
    full = float(scorer.score([wide_image], PROMPT)["ict_hp"][0])
    assert out["score"] == pytest.approx(full, abs=1e-5)
    for row in out["words"]:
        ref = full - float(scorer.score([wide_image], by_hand[row["word"]])["ict_hp"][0])
        assert row["removal_drop"] == pytest.approx(ref, abs=1e-5), row["word"]
        tol = 0.01 * abs(full)  # ICT's reading: a word whose removal raises the score is not in the image
        assert row["reading"] == ("not contained" if ref < -tol else "contained" if ref > tol else "neutral")
    drops = [r["removal_drop"] for r in out["words"]]
    assert drops == sorted(drops, reverse=True)


def _score_with_embeddings(scorer, pixels, ids, emb):
    """ICT-HP with the ICT token embeddings replaced by `emb`, computed here step by step."""
    ict, hp = scorer.models["ict"], scorer.models["hp"]
    handle = ict.clip.token_embedding.register_forward_hook(lambda m, i, o: emb)
    try:
        text = ict.clip.encode_text(ids)
    finally:
        handle.remove()
    img = ict.clip.encode_image(pixels["crop"])
    cos = torch.nn.functional.cosine_similarity(img, text, dim=-1)
    return float(cos[0] * hp(pixels["crop"])[0])


def test_integrated_gradients_are_complete(scorer, wide_image):
    pixels = scorer.preprocess([wide_image])
    per_token, check = integrated_gradients(scorer, "ict_hp", pixels, PROMPT, steps=32)
    ids = tokenize(PROMPT)
    eot = int(ids[0].argmax())
    with torch.no_grad():
        emb = scorer.models["ict"].clip.token_embedding(ids)
        zero = emb.clone()
        zero[:, 1:eot] = 0
        full = _score_with_embeddings(scorer, pixels, ids, emb)
        base = _score_with_embeddings(scorer, pixels, ids, zero)
    assert full == pytest.approx(float(scorer.score([wide_image], PROMPT)["ict_hp"][0]), abs=1e-5)
    assert check["baseline_score"] == pytest.approx(base, abs=1e-5)
    assert abs(float(per_token.sum()) - (full - base)) <= 0.01 * abs(full - base)
    assert per_token[eot:].abs().max() == 0 and per_token[0] == 0  # start/end/padding tokens are not varied


def test_explicit_attention_equals_fused(scorer, wide_image):
    x = image_tensor(wide_image)
    for metric in ("ict", "hp"):
        f = metric_fn(scorer, metric, PROMPT)
        with torch.no_grad():
            fused = f(x)
            tower = vision_tower(scorer.models[metric])
            with recording_attention([tower]) as stores:
                explicit = f(x)
        assert len(stores[id(tower)]) == len(tower.transformer.resblocks)
        assert (fused - explicit).abs().max() <= 1e-5
    assert not any("attention" in vars(b) for b in tower.transformer.resblocks)  # patch removed


def test_rollout_by_hand():
    a = torch.tensor([[[[0.5, 0.5], [0.25, 0.75]]]])
    g = torch.tensor([[[[1.0, -1.0], [2.0, 1.0]]]])
    cam = torch.tensor([[0.5, 0.0], [0.5, 0.75]])
    r = torch.eye(2) + cam @ torch.eye(2)
    assert torch.allclose(rollout([a], [g])[0], r[0, 1:])


def test_relevance_lies_in_the_centre_crop(scorer, wide_image):
    x = image_tensor(wide_image)  # 240 x 320: the crop is the centre 240 x 240
    maps = relevance(scorer, "ict_hp", x, PROMPT)
    assert set(maps) == {"ict", "hp"} and maps["ict"].shape == (1, 7, 7)
    heat = relevance_map(scorer, "ict_hp", x, PROMPT)
    assert heat.shape == (240, 320)
    assert heat[:, :40].abs().max() == 0 and heat[:, -40:].abs().max() == 0
    assert heat[:, 40:280].max() > 0


def test_occlusion_cell_by_hand(scorer, wide_image):
    x = image_tensor(wide_image)
    drops, base = occlusion(scorer, "hp", x, None, grid=3, batch_size=4)
    f = metric_fn(scorer, "hp", None)
    (r0, r1), (c0, c1) = cell_bounds(240, 3)[1], cell_bounds(320, 3)[2]
    y = x.clone()
    y[..., r0:r1, c0:c1] = x.mean(dim=(-2, -1), keepdim=True)
    with torch.no_grad():
        assert base == pytest.approx(float(f(x)[0]), abs=1e-6)
        assert float(drops[1, 2]) == pytest.approx(base - float(f(y)[0]), abs=1e-6)


def test_curves_start_at_the_image_and_end_at_the_blank(scorer, wide_image):
    x = image_tensor(wide_image)
    f = metric_fn(scorer, "hp", None)
    heat = torch.arange(16.0).reshape(4, 4)
    out = evaluate(scorer, "hp", x, None, heat, steps=4, n_random=2)
    with torch.no_grad():
        s, blank = float(f(x)[0]), float(f(x * 0 + x.mean(dim=(-2, -1), keepdim=True))[0])
    assert out["deletion_curve"][0] == pytest.approx(s, abs=1e-5)
    assert out["deletion_curve"][-1] == pytest.approx(blank, abs=1e-5)
    assert out["insertion_curve"][0] == pytest.approx(blank, abs=1e-5)
    assert auc(torch.full((5,), 0.3)) == pytest.approx(0.3)


def test_explain_api_and_errors(scorer, wide_image):
    ex = explain(scorer, wide_image, PROMPT, metrics=["ict_hp", "hp"], grid=4, ig_steps=8)
    assert set(ex.heatmaps) == {"ict_hp", "hp"} and ex.heatmaps["hp"]["occlusion"].shape == (240, 320)
    assert isinstance(ex.heatmaps["ict_hp"]["relevance"], torch.Tensor)
    assert set(ex.words) == {"ict_hp"} and ex.words["ict_hp"]["ig_check"]["relative_error"] < 0.01
    js = ex.to_json()
    assert js["regions"]["hp"]["occlusion"][0][0] == pytest.approx(float(ex.grids["hp"]["occlusion"][0, 0]))
    with pytest.raises(ExplainError, match="choose from"):
        explain(scorer, wide_image, PROMPT, methods="words,saliency")
    with pytest.raises(ExplainError, match="need a prompt"):
        explain(scorer, wide_image, None, metrics=["ict"])
    with pytest.raises(ExplainError, match="this scorer computes"):
        explain(scorer, wide_image, PROMPT, metrics=["pickscore"])


def test_gradient_methods_run_inside_inference_mode(scorer, wide_image):
    """ComfyUI executes nodes under torch.inference_mode(): IG and relevance must still get gradients."""
    with torch.inference_mode():
        ex = explain(scorer, wide_image, PROMPT, metrics=["ict"], methods="words,relevance", ig_steps=4)
    assert ex.heatmaps["ict"]["relevance"].max() > 0
    assert ex.words["ict"]["ig_check"]["relative_error"] < 0.01


@pytest.fixture(scope="session")
def blip_scorer(tmp_path_factory):
    """ImageReward (224 px centre crop) and BLIP ITM (384 px resize) on the tiny BLIP models."""
    from icthp_core.scoring.scorer import MultiScorer
    from icthp_core.testing.blip import save_tiny_blip_retrieval, save_tiny_imagereward

    ir = save_tiny_imagereward(tmp_path_factory.mktemp("ir") / "IR")
    itm = save_tiny_blip_retrieval(tmp_path_factory.mktemp("itm"), seed=2)
    return MultiScorer(["imagereward", "blip_itm"], {"imagereward": str(ir), "blip_itm": str(itm)}, device="cpu")


def test_blip_metric_gets_removal_drops_occlusion_and_relevance(blip_scorer, wide_image):
    """ImageReward (BLIP + cross-attention BERT): words by removal (no IG: not an open_clip text tower), occlusion,
    attention relevance through BLIP's ViT."""
    s = blip_scorer
    ex = explain(s, wide_image, "a red cube on a table", metrics=["imagereward"], grid=2)
    rows = {r["word"]: r for r in ex.words["imagereward"]["words"] if r["word"] != "a"}
    full = float(s.score([wide_image], "a red cube on a table")["imagereward"][0])
    for word, rest in (("red", "a cube on a table"), ("table", "a red cube on a")):
        ref = full - float(s.score([wide_image], rest)["imagereward"][0])
        assert rows[word]["removal_drop"] == pytest.approx(ref, abs=1e-5) and rows[word]["ig"] is None
    assert ex.grids["imagereward"]["occlusion"].shape == (2, 2)
    assert "imagereward/relevance" not in ex.skipped
    assert ex.heatmaps["imagereward"]["relevance"].shape == (240, 320)


@pytest.mark.parametrize("metric", ["imagereward", "blip_itm"])
def test_blip_explicit_attention_scores_as_the_normal_path(blip_scorer, wide_image, metric):
    """The explicit attention gives the normal score (<= 1e-5), records one [B, heads, N, N] per block, and is
    removed afterwards."""
    tower = vision_tower(blip_scorer.models[metric])
    f = metric_fn(blip_scorer, metric, PROMPT)
    x = image_tensor(wide_image)
    with torch.no_grad():
        normal = f(x)
        with recording_attention([tower]) as stores:
            explicit = f(x)
        again = f(x)
    assert torch.allclose(explicit, normal, atol=1e-5, rtol=0) and torch.equal(again, normal)
    probs = stores[id(tower)]
    n = tower.embeddings.num_patches + 1
    assert len(probs) == len(tower.encoder.layers) and probs[0].shape == (1, 2, n, n)
    assert torch.allclose(probs[0].sum(-1), torch.ones(1, 2, n))
    assert all("forward" not in vars(layer.self_attn) for layer in tower.encoder.layers)


@pytest.mark.parametrize(("metric", "side"), [("imagereward", 7), ("blip_itm", 6)])
def test_blip_relevance_maps_through_its_view(blip_scorer, wide_image, metric, side):
    """Relevance on the ViT grid (224/32 -> 7, 384/64 -> 6), finite and not all zero; on the canvas zero outside
    ImageReward's 240 px centre crop, and covering the whole image for BLIP ITM's resize."""
    x = image_tensor(wide_image)
    grid = relevance(blip_scorer, metric, x, PROMPT)[metric]
    assert grid.shape == (1, side, side) and torch.isfinite(grid).all() and grid.abs().sum() > 0
    heat = relevance_map(blip_scorer, metric, x, PROMPT)
    assert heat.shape == (240, 320) and torch.isfinite(heat).all()
    if metric == "imagereward":
        assert heat[:, :40].abs().max() == 0 and heat[:, 280:].abs().max() == 0 and heat[:, 40:280].abs().max() > 0
    else:
        assert heat[:, :40].abs().max() > 0 and heat[:, 280:].abs().max() > 0


def test_without_captum_words_keep_their_removal_drops(scorer, wide_image, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "captum", None)  # import captum -> ImportError
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    out = word_contributions(scorer, scorer.preprocess([wide_image]), PROMPT, "ict", ig_steps=4)
    assert "pip install 'icthp[explain]'" in out["ig_error"] and out["ig_check"] is None
    assert all(r["ig"] is None and r["removal_drop"] is not None for r in out["words"])


def test_relevance_needs_a_vit_tower():
    with pytest.raises(ExplainError, match="open_clip or BLIP ViT tower"):
        vision_tower(torch.nn.Linear(2, 2))
