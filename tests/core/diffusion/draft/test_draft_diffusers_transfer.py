"""ICT text tower in an SD2.x pipeline and ICT/HP image towers as IP-Adapter image encoder: the swapped encoders
produce exactly the features of transformers models built from the source checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from icthp_core.diffusion.transfer import instantstyle_scale, set_ip_adapter_image_encoder, set_text_encoder
from icthp_core.testing.diffusion import tiny_sd2_pipeline

pytestmark = [pytest.mark.slow]


def _reference_clip(weights: Path):
    """transformers CLIPModel with the source checkpoint's own weights and config (independent of the core)."""
    from transformers import CLIPConfig, CLIPModel

    cfg = json.loads((weights.parent / "config.json").read_text())
    model = CLIPModel(CLIPConfig(**cfg)).eval()
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return model


def test_ict_text_tower_in_sd2_pipeline(tiny_rewards):
    ict = Path(tiny_rewards["ict"])
    ref = _reference_clip(ict / "pytorch_model.bin")
    n_src = ref.config.text_config.num_hidden_layers
    pipe = tiny_sd2_pipeline(text_layers=n_src - 1, text_hidden=ref.config.text_config.hidden_size)
    before = pipe.encode_prompt("a red car", "cpu", 1, False)[0]
    set_text_encoder(pipe, ict)
    ids = pipe.tokenizer(
        ["a red car"], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    from icthp_core.scoring.text import tokenize

    assert torch.equal(ids, tokenize(["a red car"]))  # SD2.x tokens are ICT's open_clip tokens
    got = pipe.encode_prompt("a red car", "cpu", 1, False)[0]
    with torch.no_grad():
        hs = ref.text_model(input_ids=ids, output_hidden_states=True).hidden_states
        expect = ref.text_model.final_layer_norm(hs[-2])  # penultimate layer + final LN, as SD2.x uses it
    assert torch.equal(got, expect) or torch.allclose(got, expect, atol=1e-6, rtol=0)
    assert (got - before).abs().max() > 1e-3


def test_text_tower_layer_mismatch_is_named(tiny_rewards):
    pipe = tiny_sd2_pipeline(text_layers=3)
    with pytest.raises(ValueError, match="num_layers=3"):
        set_text_encoder(pipe, tiny_rewards["ict"])


@pytest.mark.parametrize("which", ["ict", "hp"])
def test_image_tower_as_ip_adapter_encoder(tiny_rewards, which):
    src = Path(tiny_rewards[which])
    weights = src / "pytorch_model.bin" if which == "ict" else src / "hp_backbone" / "pytorch_model.bin"
    ref = _reference_clip(weights)
    pipe = tiny_sd2_pipeline()
    set_ip_adapter_image_encoder(pipe, src)
    img = Image.fromarray((np.random.default_rng(0).random((40, 56, 3)) * 255).astype("uint8"))
    embeds, uncond = pipe.encode_image(img, "cpu", 1)
    pixels = pipe.feature_extractor(img, return_tensors="pt").pixel_values
    with torch.no_grad():
        expect = ref.get_image_features(pixel_values=pixels)
    expect = getattr(expect, "pooler_output", expect)
    assert torch.allclose(embeds, expect, atol=1e-6, rtol=0)
    assert torch.equal(uncond, torch.zeros_like(embeds))
    # the feature extractor preprocesses as the core (shortest side 224, bicubic, centre crop, OpenAI stats)
    from icthp_core.data.preprocess import preprocess_pil

    diff = (pixels[0] - preprocess_pil(img)).abs()
    assert diff.mean() < 1e-3 and diff.max() < 0.05  # uint8 rounding of the upscaled edge pixels only
    # and the core scores with the same features
    if which == "hp":
        from icthp_core import load_scorer

        feats = load_scorer(ict=None, hp=src, device="cpu").hp.encode_image(pixels)
        torch.testing.assert_close(feats, embeds, atol=1e-5, rtol=1e-5)


def test_instantstyle_scales():
    assert instantstyle_scale("style") == {"up": {"block_0": [0.0, 1.0, 0.0]}}
    assert instantstyle_scale("style_and_layout", 0.5) == {
        "down": {"block_2": [0.0, 0.5]},
        "up": {"block_0": [0.0, 0.5, 0.0]},
    }
    with pytest.raises(ValueError, match="mode"):
        instantstyle_scale("composition-ish")


def test_ip_adapter_end_to_end_with_hp_encoder(tiny_rewards, tmp_path):
    """A (random) IP-Adapter loaded with `load_ip_adapter(..., image_encoder_folder=None)` runs on the HP image
    tower, with InstantStyle-like block scales restricting it to one up block."""
    from safetensors.torch import save_file

    pipe = tiny_sd2_pipeline()
    pipe.set_progress_bar_config(disable=True)
    set_ip_adapter_image_encoder(pipe, tiny_rewards["hp"])
    embed_dim = pipe.image_encoder.config.projection_dim
    cross = pipe.unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    sd = {
        "image_proj.proj.weight": torch.randn(4 * cross, embed_dim, generator=g) * 0.2,
        "image_proj.proj.bias": torch.zeros(4 * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key = 1
    for name in pipe.unet.attn_processors:
        if name.endswith("attn2.processor"):
            blk = name.split(".")[0]
            idx = int(name.split(".")[1]) if blk != "mid_block" else -1
            chans = pipe.unet.config.block_out_channels
            hidden = chans[-1] if idx < 0 else (chans[idx] if blk == "down_blocks" else chans[::-1][idx])
            sd[f"ip_adapter.{key}.to_k_ip.weight"] = torch.randn(hidden, cross, generator=g) * 0.2
            sd[f"ip_adapter.{key}.to_v_ip.weight"] = torch.randn(hidden, cross, generator=g) * 0.2
            key += 2
    save_file(sd, tmp_path / "ip.safetensors")
    pipe.load_ip_adapter(str(tmp_path), subfolder="", weight_name="ip.safetensors", image_encoder_folder=None)
    assert pipe.image_encoder is not None  # our tower was kept
    img = Image.fromarray((np.random.default_rng(1).random((48, 48, 3)) * 255).astype("uint8"))

    def run(scale):
        pipe.set_ip_adapter_scale(scale)
        return pipe(
            "a cat",
            ip_adapter_image=img,
            num_inference_steps=2,
            height=32,
            width=32,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        ).images

    off = run(0.0)
    style_only = run({"up": {"block_0": [0.0, 1.0]}})
    full = run(1.0)
    assert (style_only - off).abs().max() > 1e-4 and (full - style_only).abs().max() > 1e-4
