"""ICTHPTextEncoderSwap and ICTHPCLIPVision: numeric parity with transformers models built from the same
checkpoint files (read here with torch.load, independently of icthp_core)."""

import json

import pytest
import torch

pytestmark = [pytest.mark.comfyui]

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def _hf_clip(model_dir):
    from transformers import CLIPConfig, CLIPModel

    cfg = json.loads((model_dir / "config.json").read_text())
    model = CLIPModel(CLIPConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}))
    sd = torch.load(model_dir / "pytorch_model.bin", weights_only=True)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not missing and all(k.endswith("position_ids") for k in unexpected), (missing, unexpected)
    return model.eval()


def _token_ids(clip, prompt):
    toks = clip.tokenize(prompt)
    return toks, torch.tensor([[t[0] for t in seq] for seq in toks["h"]])


def test_text_encoder_swap_matches_ict_text_tower(icthp_folder, make_sd2_clip):
    from comfy_nodes.encoder_nodes import ICTHPTextEncoderSwap

    clip = make_sd2_clip(seed=7)
    toks, ids = _token_ids(clip, "a red cube on a glass table")
    before = clip.encode_from_tokens(toks)
    (swapped,) = ICTHPTextEncoderSwap.execute(clip=clip, ict_source="ict").result
    assert swapped is not clip and swapped.cond_stage_model is clip.cond_stage_model  # a patched clone
    out = swapped.encode_from_tokens(toks)

    text = _hf_clip(icthp_folder / "ict").text_model
    with torch.no_grad():
        hf = text(input_ids=ids, output_hidden_states=True)
        ref = text.final_layer_norm(hf.hidden_states[-2])  # SD2: penultimate layer + final LayerNorm
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, out, atol=1e-3)
    # the input CLIP is unchanged, also after the swapped one ran
    torch.testing.assert_close(clip.encode_from_tokens(toks), before, rtol=0, atol=0)


def test_text_encoder_swap_keeps_clip_skip(icthp_folder, make_sd2_clip):
    from comfy_nodes.encoder_nodes import swap_text_encoder

    clip = make_sd2_clip(seed=7).clone()
    clip.clip_layer(-1)  # what "CLIP Set Last Layer" does
    toks, ids = _token_ids(clip, "a cat")
    swapped = swap_text_encoder(clip, str(icthp_folder / "ict"))
    assert swapped.layer_idx == -1
    with torch.no_grad():
        ref = _hf_clip(icthp_folder / "ict").text_model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(swapped.encode_from_tokens(toks), ref, rtol=1e-5, atol=1e-5)


def test_text_encoder_swap_errors(icthp_folder, make_sd2_clip, tmp_path, monkeypatch):
    from comfy_nodes.encoder_nodes import ICTHPTextEncoderSwap, swap_text_encoder
    from comfy_nodes.paths import ALLOW_ANY_PATH_ENV
    from icthp_core.testing.tiny import save_tiny_ict

    monkeypatch.setenv(ALLOW_ANY_PATH_ENV, "1")  # a model outside models/icthp, allowed explicitly

    small = save_tiny_ict(tmp_path / "ict2", seed=3)  # 2 text layers: does not fit the 3-layer CLIP
    with pytest.raises(ValueError, match="does not fit this CLIP"):
        swap_text_encoder(make_sd2_clip(), str(small))

    class NotSD2:
        class cond_stage_model:  # noqa: N801
            @staticmethod
            def state_dict():
                return {"clip_l.transformer.text_model.final_layer_norm.weight": torch.zeros(1)}

    with pytest.raises(ValueError, match="needs an SD2.x CLIP"):
        swap_text_encoder(NotSD2(), str(icthp_folder / "ict"))
    with pytest.raises(FileNotFoundError, match="not found in models/icthp"):
        ICTHPTextEncoderSwap.execute(clip=make_sd2_clip(), ict_source="no_such_folder")


@pytest.mark.parametrize("kind", ["ICT", "HP"])
def test_clip_vision_matches_source_model(kind, icthp_folder):
    import comfy.clip_vision
    from transformers import CLIPVisionModelWithProjection

    from comfy_nodes.encoder_nodes import ICTHPCLIPVision

    name = "ict" if kind == "ICT" else "hp"
    (cv,) = ICTHPCLIPVision.execute(source=f"{kind}: {name}", dtype="fp32").result
    assert isinstance(cv, comfy.clip_vision.ClipVisionModel)
    (again,) = ICTHPCLIPVision.execute(source=f"{kind}: {name}", dtype="fp32").result
    assert again is cv  # cached: no second read from disk

    torch.manual_seed(0)
    images = torch.rand(2, 224, 224, 3)
    out = cv.encode_image(images)

    src = icthp_folder / name if kind == "ICT" else icthp_folder / name / "hp_backbone"
    full = _hf_clip(src)
    ref_model = CLIPVisionModelWithProjection(
        full.config.vision_config.__class__(
            **{**full.config.vision_config.to_dict(), "projection_dim": full.config.projection_dim}
        )
    ).eval()
    ref_model.vision_model.load_state_dict(full.vision_model.state_dict())
    ref_model.visual_projection.load_state_dict(full.visual_projection.state_dict())
    pixels = (torch.round(images.movedim(-1, 1) * 255) / 255 - MEAN) / STD
    with torch.no_grad():
        ref = ref_model(pixel_values=pixels, output_hidden_states=True)
    torch.testing.assert_close(out["image_embeds"], ref.image_embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["penultimate_hidden_states"], ref.hidden_states[-2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["last_hidden_state"], ref.last_hidden_state, rtol=1e-5, atol=1e-5)


def test_clip_vision_dtype_config_and_errors(icthp_folder, tmp_path):
    from comfy_nodes.encoder_nodes import ICTHPCLIPVision

    (cv,) = ICTHPCLIPVision.execute(source="ICT: ict", dtype="default").result
    assert cv.dtype == torch.float16  # ComfyUI's text-encoder default on CPU
    assert next(cv.model.parameters()).dtype == torch.float16
    cfg = json.loads((icthp_folder / "ict" / "config.json").read_text())
    cfg["vision_config"]["hidden_size"] = 48
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not fit config"):
        ICTHPCLIPVision.execute(source="ICT: ict", dtype="fp32", config_json=str(bad))
    with pytest.raises(ValueError, match="source must look like"):
        ICTHPCLIPVision.execute(source="ict", dtype="fp32")
