"""ICTHPRewardMix, ICTHPSelect, ICTHPSaveWithScores and ICTHPModelManager with tiny real ICT/HP models."""

import json

import pytest
import torch

pytestmark = [pytest.mark.comfyui]

PROMPT = "a bowl of fruit"


@pytest.fixture(scope="module")
def models(icthp_folder):
    from comfy_nodes.reward_nodes import ICTHPLoader

    ict = ICTHPLoader.execute(model="ICT", ict_source="ict", hp_source="hp").result[0]
    hp = ICTHPLoader.execute(model="HP", ict_source="ict", hp_source="hp").result[0]
    both = ICTHPLoader.execute(model="ICT-HP", ict_source="ict", hp_source="hp").result[0]
    return ict, hp, both


def _images(n, seed=0, h=48, w=48):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def test_reward_mix_weighted_z_scores(models):
    from comfy_nodes.reward_nodes import ICTHPBestOfN
    from comfy_nodes.selection_nodes import ICTHPRewardMix

    ict, hp, both = models
    images = _images(5)
    (mix,) = ICTHPRewardMix.execute(
        reward_model_1=ict, reward_model_2=hp, weights="ict:1.0, hp:0.5", normalize="batch"
    ).result
    s = mix.score(images, [PROMPT] * 5)
    z = {m: (s[m].double() - s[m].double().mean()) / s[m].double().std(unbiased=False) for m in ("ict", "hp")}
    torch.testing.assert_close(s["weighted"], (z["ict"] + 0.5 * z["hp"]).float())
    assert mix.primary == "weighted" and mix.metrics == ["weighted", "ict", "hp"]
    # the mix plugs into the existing best-of-N node (metric auto = weighted)
    out = ICTHPBestOfN.execute(reward_model=mix, images=images, prompt=PROMPT, k=2).result
    assert out[1] == sorted(s["weighted"].tolist(), reverse=True)[:2]
    # reference statistics: absolute (x - mean) / std
    (ref,) = ICTHPRewardMix.execute(
        reward_model_1=both, weights="ict_hp:1", normalize="reference", reference_stats="ict_hp:0.1:0.01"
    ).result
    torch.testing.assert_close(ref.score(images, [PROMPT] * 5)["weighted"], (s_ict_hp(both, images) - 0.1) / 0.01)
    with pytest.raises(ValueError, match="given by more than one"):
        ICTHPRewardMix.execute(reward_model_1=ict, reward_model_2=both, weights="ict:1", normalize="batch")
    with pytest.raises(ValueError, match="do not give"):
        ICTHPRewardMix.execute(reward_model_1=ict, weights="hp:1", normalize="batch")
    with pytest.raises(ValueError, match="no 'metric:mean:std' statistics for \\['ict'\\]"):
        ICTHPRewardMix.execute(reward_model_1=ict, weights="ict:1", normalize="reference")


def s_ict_hp(rm, images):
    return rm.score(images, [PROMPT] * images.shape[0])["ict_hp"]


def test_select_lists_threshold_and_alignment(models):
    from comfy_nodes.selection_nodes import ICTHPSelect

    _, hp, _ = models
    a, b = _images(3, seed=1), _images(2, seed=2, h=32)  # different sizes: a list, not one batch
    sa, sb = hp.score(a, [""] * 3)["hp"].tolist(), hp.score(b, [""] * 2)["hp"].tolist()
    flat = [(0, i, v) for i, v in enumerate(sa)] + [(1, i, v) for i, v in enumerate(sb)]
    order = sorted(flat, key=lambda t: -t[2])
    lat = [
        {"samples": torch.arange(3.0).view(3, 1, 1, 1).expand(3, 4, 6, 6)},
        {"samples": 10 + torch.zeros(2, 4, 4, 4)},
    ]
    masks = [torch.arange(3.0).view(3, 1, 1).expand(3, 48, 48), torch.ones(1, 32, 32)]

    def run(k, thr=None, on_empty="keep_best"):
        return ICTHPSelect.execute(
            reward_model=[hp],
            images=[a, b],
            prompt=[""],
            k=[k],
            metric=["auto"],
            use_threshold=[thr is not None],
            threshold=[thr or 0.0],
            on_empty=[on_empty],
            latent=lat,
            mask=masks,
        ).result

    images, latents, out_masks, scores, idx, summary = run(3)
    assert idx == [f"{li}:{bi}" for li, bi, _ in order[:3]] and scores == [v for *_, v in order[:3]]
    for (li, bi, _), im, la, m in zip(order[:3], images, latents, out_masks, strict=True):
        assert torch.equal(im, [a, b][li][bi : bi + 1])
        assert la["batch_index"] == [bi] and float(la["samples"][0, 0, 0, 0]) == (bi if li == 0 else 10)
        assert m.shape[0] == 1 and (li == 1 or float(m[0, 0, 0]) == bi)  # the shared mask of b stays shared
    # threshold between the 2nd and 3rd best: two pass
    thr = (order[1][2] + order[2][2]) / 2
    assert len(run(5, thr)[0]) == 2
    # nothing passed: keep_best keeps one; empty blocks every list output (ComfyUI then skips the nodes fed by them:
    # an empty list would make it call them with no image at all)
    from comfy_execution.graph_utils import ExecutionBlocker

    assert run(5, 2.0)[4] == [f"{order[0][0]}:{order[0][1]}"]
    empty = run(5, 2.0, "empty")
    assert all(isinstance(x, ExecutionBlocker) for x in empty[:5]) and "nothing passed" in empty[5]
    with pytest.raises(ValueError, match="no score reached the threshold 2.0"):
        run(5, 2.0, "error")


def test_save_with_scores_metadata_banner_and_cli(models, comfy_root, tmp_path, capsys):
    import folder_paths
    from PIL import Image

    from comfy_nodes.metadata_nodes import ICTHPSaveWithScores
    from icthp_cli.main import main as cli
    from icthp_core.data.metadata import read_record

    _, _, both = models
    folder_paths.set_output_directory(str(tmp_path))
    images = _images(2, seed=5, h=64, w=96)
    out = ICTHPSaveWithScores.execute(
        images=images, reward_model=both, prompt=PROMPT, filename_prefix="t/run", banner=True
    )
    saved, records = out.result
    files = [tmp_path / r["subfolder"] / r["filename"] for r in out.ui.as_dict()["images"]]
    assert len(files) == 2 and all(f.is_file() for f in files)
    expect = both.score(images, [PROMPT, PROMPT])
    for i, f in enumerate(files):
        rec = read_record(f)
        assert rec == json.loads(records[i])
        assert rec["prompt"] == PROMPT and rec["model"] == "ICT-HP" and set(rec["sources"]) == {"ict", "hp"}
        assert rec["scores"]["ict_hp"] == pytest.approx(float(expect["ict_hp"][i]), rel=1e-6)
        assert rec["metrics"]["ict_hp"]["label"] == "ICT-HP"
    # the banner changed the bottom rows only
    pil = torch.from_numpy(__import__("numpy").asarray(Image.open(files[0]), dtype="float32") / 255)
    assert torch.allclose(pil[:40], images[0, :40], atol=1 / 255 + 1e-6) and not torch.allclose(
        pil[-5:], images[0, -5:]
    )
    assert torch.equal(saved[0], pil)
    # read back without a model
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    rc = cli(["score", "--from-metadata", str(files[0]), str(plain), "--output", str(tmp_path / "r.jsonl")])
    cap = capsys.readouterr()
    assert rc == 0 and f"ict_hp={rec['scores']['ict_hp']:.4f}" not in cap.out  # rec is the 2nd image's
    assert f"ict_hp={read_record(files[0])['scores']['ict_hp']:.4f}" in cap.out
    assert "plain.png: no icthp_scores metadata" in cap.err
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]  # score rows, any --output
    stored = read_record(files[0])["scores"]
    assert len(rows) == 2 and {m: rows[0][m] for m in stored} == stored and rows[0]["error"] is None
    assert "no icthp_scores metadata" in rows[1]["error"]  # an image without a record is an error row
    assert cli(["score", "--from-metadata", str(plain)]) == 1


def test_model_manager_offline_listing(icthp_folder):
    from comfy_nodes.manager_nodes import ICTHPModelManager

    (text,) = ICTHPModelManager.execute(models="ict+hp", action="check (offline)").result
    lines = text.splitlines()
    assert lines[0] == f"models/icthp = {icthp_folder}"
    assert sum(ln.startswith("present") for ln in lines) == 3  # the tiny models in the published layout
    (text,) = ICTHPModelManager.execute(models="pickscore", action="check (offline)").result
    assert text.count("missing") >= 2 and "offline" in text


class _Poisoned:
    """A loaded reward model whose metric is NaN for one image (a failed score), otherwise unchanged."""

    def __init__(self, rm, bad: int):
        self.rm, self.bad = rm, bad
        self.metrics, self.name, self.sources, self.needs_prompt = rm.metrics, rm.name, rm.sources, rm.needs_prompt

    def score(self, images, prompts, batch_size=8):
        out = {m: v.clone().float() for m, v in self.rm.score(images, prompts, batch_size).items()}
        for v in out.values():
            v[self.bad] = float("nan")
        return out


def test_reward_mix_batch_nan_ranks_last_and_select_keeps_the_best(models):
    from comfy_nodes.selection_nodes import ICTHPRewardMix, ICTHPSelect

    ict, hp, _ = models
    images = _images(5, seed=3)
    clean = {m: v.double() for m, v in hp.score(images, [PROMPT] * 5).items()}
    (mix,) = ICTHPRewardMix.execute(reward_model_1=_Poisoned(hp, bad=2), weights="hp:1", normalize="batch").result
    w = mix.score(images, [PROMPT] * 5)["weighted"]
    assert torch.isnan(w[2]) and torch.isfinite(w[[0, 1, 3, 4]]).all() and w[[0, 1, 3, 4]].abs().sum() > 0
    others = [i for i in range(5) if i != 2]
    best = max(others, key=lambda i: float(clean["hp"][i]))
    out = ICTHPSelect.execute(
        reward_model=[mix],
        images=[images],
        prompt=[PROMPT],
        k=[1],
        metric=["auto"],
        use_threshold=[False],
        threshold=[0.0],
        on_empty=["keep_best"],
    ).result
    assert out[4] == [f"0:{best}"]
    with pytest.raises(ValueError, match="finite"):
        ICTHPRewardMix.execute(reward_model_1=ict, weights="ict:nan", normalize="batch")
    with pytest.raises(ValueError, match="finite"):
        ICTHPRewardMix.execute(reward_model_1=ict, weights="ict:inf", normalize="batch")
