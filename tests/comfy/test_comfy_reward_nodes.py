"""ICTHPLoader / ICTHPScore / ICTHPBestOfN with tiny ICT and HP models, checked against transformers."""

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = [pytest.mark.comfyui]

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def reward_model(icthp_folder):
    from comfy_nodes.reward_nodes import ICTHPLoader

    (rm,) = ICTHPLoader.execute(model="ICT-HP", ict_source="ict", hp_source="hp", device="default", dtype="fp32").result
    return rm


def _images(n, h=64, w=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, 3, generator=g)


def _pil_pixels(img: torch.Tensor) -> torch.Tensor:
    """Upstream evaluation preprocessing of the PNG ComfyUI would save: 8-bit, shortest side 224 (bicubic),
    center crop, CLIP mean/std."""
    arr = np.clip(255.0 * img.numpy(), 0, 255).astype(np.uint8)
    pil = Image.fromarray(arr)
    s = 224 / min(pil.size)
    pil = pil.resize((round(pil.width * s), round(pil.height * s)), Image.BICUBIC)
    left, top = (pil.width - 224) // 2, (pil.height - 224) // 2
    pil = pil.crop((left, top, left + 224, top + 224))
    x = (np.asarray(pil, dtype=np.float64) / 255.0 - MEAN) / STD
    return torch.from_numpy(x).permute(2, 0, 1).float()


def _reference_scores(model_dir, images, prompt):
    """ICT cosine and HP = sigmoid(head(proj features)) from transformers CLIPModels loaded from the files."""
    import json

    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    def load(d):
        cfg = json.loads((d / "config.json").read_text())
        m = CLIPModel(CLIPConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}))
        m.load_state_dict(torch.load(d / "pytorch_model.bin", weights_only=True), strict=False)
        return m.eval()

    ict, hp = load(model_dir / "ict"), load(model_dir / "hp" / "hp_backbone")
    head = torch.load(model_dir / "hp" / "hp_scorer" / "mlp_pytorch_model.bin", weights_only=True)
    pixels = torch.stack([_pil_pixels(im) for im in images])
    import os

    import comfy.sd1_clip  # ComfyUI ships the CLIP BPE vocabulary (same ids as open_clip's tokenizer)

    tok = CLIPTokenizer.from_pretrained(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer"))
    ids = tok([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
    ids[ids == 49407] = 0  # this tokenizer pads with the EOT id; open_clip pads with 0 after one EOT
    ids[0, (ids[0] != 0).sum()] = 49407
    with torch.no_grad():
        img_f = ict.get_image_features(pixel_values=pixels)
        txt_f = ict.get_text_features(input_ids=ids)
        img_f = getattr(img_f, "pooler_output", img_f)
        txt_f = getattr(txt_f, "pooler_output", txt_f)
        ict_s = torch.nn.functional.cosine_similarity(img_f, txt_f.expand_as(img_f), dim=-1)
        f = hp.get_image_features(pixel_values=pixels)
        f = getattr(f, "pooler_output", f)
        for i in (0, 2, 4, 6, 7):
            f = f @ head[f"layers.{i}.weight"].T + head[f"layers.{i}.bias"]
        hp_s = torch.sigmoid(f.squeeze(-1))
    return ict_s, hp_s


def test_loader_caches_and_uses_comfy_model_management(reward_model, icthp_folder):
    import comfy.model_management as mm
    import comfy.model_patcher

    from comfy_nodes.reward_nodes import ICTHPLoader

    assert isinstance(reward_model.patcher, comfy.model_patcher.ModelPatcher)
    assert reward_model.metrics == ["ict_hp", "ict", "hp"]
    (again,) = ICTHPLoader.execute(model="ICT-HP", ict_source="ict", hp_source="hp").result
    assert again is reward_model  # no second load from disk
    reward_model.load()
    assert any(lm.model is reward_model.patcher for lm in mm.current_loaded_models)
    (ict_only,) = ICTHPLoader.execute(model="ICT", ict_source="ict", hp_source="8y/HP").result
    assert ict_only.metrics == ["ict"]
    with pytest.raises(FileNotFoundError, match="models/icthp"):
        ICTHPLoader.execute(model="HP", ict_source="ict", hp_source="missing_dir")


def test_score_node_matches_transformers_reference(reward_model, icthp_folder):
    import comfy.utils

    from comfy_nodes.reward_nodes import ICTHPScore

    images = _images(3)
    prompt = "a small wooden house by a lake"
    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    try:
        out = ICTHPScore.execute(reward_model=reward_model, images=images, prompt=prompt, batch_size=1)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    score, ict, hp, ict_hp, table = out.result
    assert calls == [(1, 3), (2, 3), (3, 3)]
    ref_ict, ref_hp = _reference_scores(icthp_folder, images, prompt)
    np.testing.assert_allclose(ict, ref_ict.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hp, ref_hp.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ict_hp, np.array(ict) * np.array(hp), rtol=1e-5)
    assert score == ict_hp and len(score) == 3
    assert "ict_hp" in table and out.ui.as_dict()["text"] == (table,)


def test_score_node_prompts_per_line_and_errors(reward_model):
    from comfy_nodes.reward_nodes import ICTHPScore

    images = _images(2)
    per_line = ICTHPScore.execute(
        reward_model=reward_model, images=images, prompt="a dog\n\na cat", one_prompt_per_line=True
    ).result
    dog = ICTHPScore.execute(reward_model=reward_model, images=images[:1], prompt="a dog").result
    cat = ICTHPScore.execute(reward_model=reward_model, images=images[1:], prompt="a cat").result
    np.testing.assert_allclose(per_line[1], dog[1] + cat[1], rtol=1e-5)
    with pytest.raises(ValueError, match="3 non-empty lines for 2 images"):
        ICTHPScore.execute(reward_model=reward_model, images=images, prompt="a\nb\nc", one_prompt_per_line=True)
    with pytest.raises(ValueError, match="empty"):
        ICTHPScore.execute(reward_model=reward_model, images=images[:0], prompt="a dog")
    with pytest.raises(ValueError, match="prompt is empty"):
        ICTHPScore.execute(reward_model=reward_model, images=images, prompt="  ")


def test_best_of_n_reindexes_images_latent_and_mask(reward_model):
    from comfy_nodes.reward_nodes import ICTHPBestOfN, ICTHPScore

    images = _images(5, seed=3)
    prompt = "a bowl of fruit"
    hp = ICTHPScore.execute(reward_model=reward_model, images=images, prompt=prompt).result[2]
    order = sorted(range(5), key=lambda i: -hp[i])
    latent = {
        "samples": torch.arange(5.0).view(5, 1, 1, 1).expand(5, 4, 8, 10).clone(),
        "noise_mask": torch.arange(5.0).view(5, 1, 1, 1).expand(5, 1, 64, 80).clone(),
    }
    mask = torch.arange(5.0).view(5, 1, 1).expand(5, 64, 80).clone()
    out = ICTHPBestOfN.execute(
        reward_model=reward_model, images=images, prompt=prompt, k=2, metric="hp", latent=latent, mask=mask
    )
    best, scores, lat, msk, rejected, rejected_scores, summary = out.result
    assert torch.equal(best, images[order[:2]]) and torch.equal(rejected, images[order[2:]])
    assert scores == [hp[i] for i in order[:2]] and rejected_scores == [hp[i] for i in order[2:]]
    assert lat["samples"][:, 0, 0, 0].tolist() == [float(i) for i in order[:2]]
    assert lat["noise_mask"][:, 0, 0, 0].tolist() == [float(i) for i in order[:2]]
    assert lat["batch_index"] == order[:2] and msk[:, 0, 0].tolist() == [float(i) for i in order[:2]]
    assert "kept 2 of 5" in summary

    # k above the batch keeps everything; nothing is rejected, so the nodes fed by rejected_images are blocked
    # (ComfyUI's ExecutionBlocker, silent) rather than given an empty batch that PreviewImage cannot show
    from comfy_execution.graph_utils import ExecutionBlocker

    out = ICTHPBestOfN.execute(reward_model=reward_model, images=images, prompt=prompt, k=9).result
    assert out[0].shape[0] == 5 and out[2] is None and out[3] is None and out[5] == []
    assert isinstance(out[4], ExecutionBlocker) and out[4].message is None
    one = ICTHPBestOfN.execute(reward_model=reward_model, images=images[:1], prompt=prompt, k=1).result
    assert torch.equal(one[0], images[:1]) and len(one[1]) == 1


def test_best_of_n_errors(reward_model):
    from comfy_nodes.reward_nodes import ICTHPBestOfN

    images = _images(3)
    with pytest.raises(ValueError, match="metric 'pickscore' is not given"):
        ICTHPBestOfN.execute(reward_model=reward_model, images=images, prompt="x", metric="pickscore")
    with pytest.raises(ValueError, match="LATENT has 2 samples but IMAGE has 3"):
        ICTHPBestOfN.execute(
            reward_model=reward_model, images=images, prompt="x", latent={"samples": torch.zeros(2, 4, 8, 8)}
        )
    with pytest.raises(ValueError, match="MASK has batch 2"):
        ICTHPBestOfN.execute(reward_model=reward_model, images=images, prompt="x", mask=torch.zeros(2, 8, 8))


def test_baseline_through_the_loader(icthp_folder, reward_model):
    """A baseline metric ('clip' = CLIP cosine) loaded from a local CLIP folder: with the ICT weights as that
    CLIP, its score must equal ICT's."""
    import torch

    from comfy_nodes.models import _Holder
    from comfy_nodes.reward_nodes import ICTHPLoader, ICTHPScore

    (clip_rm,) = ICTHPLoader.execute(
        model="clip", ict_source="ict", hp_source="hp", baseline_source=str(icthp_folder / "ict")
    ).result
    assert clip_rm.metrics == ["clip"]
    images = _images(2, seed=5)
    score, ict, hp, ict_hp, table = ICTHPScore.execute(reward_model=clip_rm, images=images, prompt="a tree").result
    assert ict == hp == ict_hp == [] and "clip" in table
    ref = ICTHPScore.execute(reward_model=reward_model, images=images, prompt="a tree").result[1]
    np.testing.assert_allclose(score, ref, rtol=1e-5, atol=1e-6)
    assert "hpsv2_1" in dict(_Holder({"hpsv2.1": torch.nn.Linear(1, 1)}).named_children())


def test_changed_model_files_are_reloaded(icthp_folder, tmp_path, monkeypatch):
    """fingerprint_inputs (ComfyUI's re-run check) and the in-process cache both notice changed files."""
    import os
    import shutil

    from comfy_nodes.paths import ALLOW_ANY_PATH_ENV
    from comfy_nodes.reward_nodes import ICTHPLoader

    monkeypatch.setenv(ALLOW_ANY_PATH_ENV, "1")  # a folder outside models/icthp, allowed explicitly

    src = tmp_path / "ict_copy"
    shutil.copytree(icthp_folder / "ict", src)
    kw = {"model": "ICT", "ict_source": str(src), "hp_source": "8y/HP", "device": "default", "dtype": "fp32"}
    fp1 = ICTHPLoader.fingerprint_inputs(**kw)
    (first,) = ICTHPLoader.execute(**kw).result
    assert ICTHPLoader.fingerprint_inputs(**kw) == fp1 and ICTHPLoader.execute(**kw).result[0] is first
    st = (src / "pytorch_model.bin").stat()
    os.utime(src / "pytorch_model.bin", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert ICTHPLoader.fingerprint_inputs(**kw) != fp1
    assert ICTHPLoader.execute(**kw).result[0] is not first


def test_hp_alone_needs_no_prompt(icthp_folder, reward_model):
    from comfy_nodes.reward_nodes import ICTHPBestOfN, ICTHPLoader, ICTHPScore

    (hp_rm,) = ICTHPLoader.execute(model="HP", ict_source="8y/ICT", hp_source="hp").result
    images = _images(3, seed=9)
    score, ict, hp, ict_hp, _ = ICTHPScore.execute(reward_model=hp_rm, images=images, prompt="").result
    ref_hp = ICTHPScore.execute(reward_model=reward_model, images=images, prompt="x").result[2]
    assert score == hp and ict == ict_hp == []
    np.testing.assert_allclose(hp, ref_hp, rtol=1e-6)
    best = ICTHPBestOfN.execute(reward_model=hp_rm, images=images, prompt="", k=1).result
    assert best[1] == [max(hp)]
