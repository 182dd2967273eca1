"""Each baseline loads its own published layout and matches its upstream definition on tiny random weights."""

from __future__ import annotations

import json

import numpy as np
import open_clip
import torch
from PIL import Image
from reference import MEAN, STD, load_hf_clip, load_mlp, ref_aesthetic, ref_cosine, ref_pixels, ref_tokens

from icthp_core import MultiScorer, create_reward_model, list_metrics
from icthp_core.checkpoints.files import save_state_dict
from icthp_core.testing.tiny import save_tiny_clip, tiny_clip_config, tiny_head

PROMPTS = ["a photo of a cat", "a watercolor of a lighthouse in a storm", "red cube on a blue sphere"]


def _images(image_dir):
    return [Image.open(p).convert("RGB") for p in sorted(image_dir.iterdir())[:3]]


def test_registry_lists_all_metrics():
    assert {"ict", "hp", "ict_hp", "clip", "pickscore", "hpsv2", "hpsv2.1", "aesthetic"} <= set(list_metrics())


def test_clip_and_pickscore_match_transformers(tmp_path, image_dir):
    d = save_tiny_clip(tmp_path / "pick", seed=7, fmt="safetensors")
    imgs = _images(image_dir)
    ref_model = load_hf_clip(d, "model.safetensors")
    px, tok = ref_pixels(imgs), ref_tokens(PROMPTS)
    s = MultiScorer(["clip", "pickscore"], {"clip": str(d), "pickscore": str(d)}, device="cpu")
    ours = s.score(imgs, PROMPTS)
    assert (ours["clip"] - ref_cosine(ref_model, px, tok)).abs().max() <= 1e-5
    pick = ref_cosine(ref_model, px, tok, logit_scaled=True)
    assert (ours["pickscore"] - pick).abs().max() <= 1e-4 * pick.abs().max()
    assert not torch.allclose(ours["clip"], ours["pickscore"])


def _letterbox_reference(img: Image.Image) -> torch.Tensor:
    """HPSv2's eval transform written out: ResizeMaxSize(224, fill=0) -> ToTensor -> Normalize (torchvision)."""
    import torchvision.transforms.functional as TF

    w, h = img.size
    scale = 224 / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    img = TF.resize(img, [nh, nw], interpolation=TF.InterpolationMode.BICUBIC)
    ph, pw = 224 - nh, 224 - nw
    img = TF.pad(img, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0)
    return TF.normalize(TF.to_tensor(img.convert("RGB")), MEAN, STD)


def test_hpsv2_matches_open_clip_with_letterbox(tmp_path, image_dir):
    """HPSv2 ships open_clip keys under `state_dict`: load via our path, compare with plain open_clip."""
    cfg = tiny_clip_config()
    from icthp_core.checkpoints.config import open_clip_cfg

    torch.manual_seed(11)
    ref = open_clip.model.CLIP(**open_clip_cfg(cfg)).eval()
    d = tmp_path / "hps"
    d.mkdir()
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, d / "HPS_v2.1_compressed.pt")
    (d / "config.json").write_text(json.dumps(cfg))
    model = create_reward_model("hpsv2.1", d, device="cpu")
    imgs = _images(image_dir)
    px = torch.stack([_letterbox_reference(im) for im in imgs])
    with torch.no_grad():
        fi = torch.nn.functional.normalize(ref.encode_image(px), dim=-1)
        ft = torch.nn.functional.normalize(ref.encode_text(open_clip.get_tokenizer("ViT-H-14")(PROMPTS)), dim=-1)
    expected = (fi * ft).sum(-1)
    ours = MultiScorer(["hpsv2.1"], models={"hpsv2.1": model}, device="cpu").score(imgs, PROMPTS)["hpsv2.1"]
    assert (ours - expected).abs().max() <= 1e-5


def test_aesthetic_matches_reference(tmp_path, image_dir):
    cfg = tiny_clip_config(text_config={"hidden_act": "quick_gelu"}, vision_config={"hidden_act": "quick_gelu"})
    d = save_tiny_clip(tmp_path / "aes", seed=4, config=cfg)
    head = tiny_head(16, seed=5)
    save_state_dict(head.state_dict(), d / "sac+logos+ava1-l14-linearMSE.pth")
    imgs = _images(image_dir)
    expected = ref_aesthetic(load_hf_clip(d), load_mlp(d / "sac+logos+ava1-l14-linearMSE.pth"), ref_pixels(imgs))
    ours = MultiScorer(["aesthetic"], {"aesthetic": str(d)}, device="cpu").score(imgs)["aesthetic"]
    assert (ours - expected).abs().max() <= 1e-5


def test_multiscorer_shares_models_and_matches_single(tiny_ict, tiny_hp, image_dir):
    imgs = _images(image_dir)
    s = MultiScorer(["ict_hp", "ict", "hp"], {"ict": str(tiny_ict), "hp": str(tiny_hp)}, device="cpu")
    assert set(s.models) == {"ict", "hp"}
    out = s.score(imgs, "a cat", batch_size=2)
    assert torch.allclose(out["ict_hp"], out["ict"] * out["hp"])
    one = s.score(imgs[1:2], "a cat")
    assert torch.allclose(one["ict"], out["ict"][1:2], atol=1e-6)


def test_numpy_inputs(tiny_ict, image_dir):
    s = MultiScorer(["ict"], {"ict": str(tiny_ict)}, device="cpu")
    imgs = _images(image_dir)
    a = s.score(imgs, "a cat")["ict"]
    b = s.score([np.asarray(im) for im in imgs], "a cat")["ict"]
    assert torch.allclose(a, b)
