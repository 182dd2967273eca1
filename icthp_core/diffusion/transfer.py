"""ICT / HP towers inside diffusers pipelines (the diffusers side of the paper's Fig. 7 and Fig. 8).

- `set_text_encoder(pipe, src)`: the ICT text tower as the text encoder of an SD2.x pipeline. diffusers' SD2.x
  `CLIPTextModel` has 23 layers (the penultimate layer of OpenCLIP-H, then `final_layer_norm`), so the ICT
  tower's last layer is dropped. SD2.x's tokenizer is OpenCLIP-H's BPE with pad id 0, as ICT was trained.
- `set_ip_adapter_image_encoder(pipe, src)`: the ICT or HP image tower (CLIP ViT-H/14, 1024-d embeddings) as the
  IP-Adapter image encoder (ViT-H IP-Adapters: `ip-adapter_sd15.bin`, `ip-adapter_sdxl_vit-h.bin`, ...), with a
  matching `CLIPImageProcessor` (224, bicubic, centre crop, OpenAI mean/std).
- `instantstyle_scale(mode)`: InstantStyle per-block IP-Adapter scales for `pipe.set_ip_adapter_scale`.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from icthp_core.checkpoints.transfer import hf_clip_config, text_encoder_state_dict, vision_encoder_state_dict
from icthp_core.data.preprocess import OPENAI_MEAN, OPENAI_STD  # noqa: F401 - re-exported
from icthp_core.errors import ConfigError

# InstantStyle (SDXL UNet): "style" = only up_blocks.0 attention 1; "style_and_layout" adds down_blocks.2 attention 1
INSTANTSTYLE = {
    "style": {"up": {"block_0": [0.0, 1.0, 0.0]}},
    "layout": {"down": {"block_2": [0.0, 1.0]}},
    "style_and_layout": {"down": {"block_2": [0.0, 1.0]}, "up": {"block_0": [0.0, 1.0, 0.0]}},
}


def instantstyle_scale(mode: str = "style", strength: float = 1.0) -> dict[str, Any]:
    """Block scales for `pipe.set_ip_adapter_scale(...)` (SDXL): `mode` in "style", "layout", "style_and_layout"."""
    if mode not in INSTANTSTYLE:
        raise ConfigError(f"mode must be one of {sorted(INSTANTSTYLE)}, got {mode!r}")
    return {
        part: {blk: [s * strength for s in v] for blk, v in blocks.items()}
        for part, blocks in INSTANTSTYLE[mode].items()
    }


def _check_heads(target_cfg, src_cfg: dict, tower: str, src) -> None:
    want = src_cfg.get(f"{tower}_config", {}).get("num_attention_heads")
    have = getattr(target_cfg, "num_attention_heads", None)
    if want is not None and have is not None and want != have:
        raise ValueError(f"{src}: the {tower} tower has {want} attention heads but the pipeline's encoder has {have}")


def _load_into(module: nn.Module, sd: dict[str, torch.Tensor], what: str, src) -> None:
    own = module.state_dict()
    if not any(k.startswith("text_model.") for k in own):  # transformers 5 CLIPTextModel: no text_model. prefix
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{src}: {what} keys do not match the pipeline's encoder; missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    bad = [k for k in sd if sd[k].shape != own[k].shape]
    if bad:
        raise ValueError(
            f"{src}: {what} shape mismatch at {bad[0]}: {tuple(sd[bad[0]].shape)} vs "
            f"{tuple(own[bad[0]].shape)} (is the pipeline an SD2.x / ViT-H one?)"
        )
    ref = next(iter(own.values()))
    module.load_state_dict({k: v.to(dtype=ref.dtype, device=ref.device) for k, v in sd.items()}, strict=True)


def set_text_encoder(pipe, src: str | os.PathLike, component: str = "text_encoder"):
    """Replace the weights of `pipe.<component>` (a `CLIPTextModel`, 23 layers in SD2.x) by the ICT text tower,
    keeping as many layers as the pipeline's encoder has. Returns `pipe`."""
    enc = getattr(pipe, component, None)
    if enc is None:
        raise ValueError(f"the pipeline has no {component!r}")
    n = enc.config.num_hidden_layers
    _check_heads(enc.config, hf_clip_config(src), "text", src)
    _load_into(enc, text_encoder_state_dict(src, num_layers=n), "text tower", src)
    return pipe


def image_encoder(src: str | os.PathLike, dtype: torch.dtype = torch.float32, device=None):
    """`CLIPVisionModelWithProjection` holding the ICT (or HP, via `hp_backbone/`) image tower."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = hf_clip_config(src)
    vcfg = dict(cfg.get("vision_config", {}))
    vcfg.setdefault("projection_dim", cfg.get("projection_dim", 1024))
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**vcfg))
    _load_into(model, vision_encoder_state_dict(src), "image tower", src)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def clip_image_processor(size: int = 224):
    """The CLIP preprocessing the ICT/HP towers were trained with (shortest side → size, bicubic, centre crop)."""
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        do_center_crop=True,
        do_resize=True,
        resample=3,
        do_normalize=True,
        image_mean=OPENAI_MEAN,
        image_std=OPENAI_STD,
        do_convert_rgb=True,
    )


def set_ip_adapter_image_encoder(pipe, src: str | os.PathLike):
    """Use the ICT/HP image tower as `pipe.image_encoder` (+ matching `feature_extractor`). Call before or after
    `pipe.load_ip_adapter(..., image_encoder_folder=None)`. Returns `pipe`."""
    ref = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    dtype = ref.dtype if ref is not None else torch.float32
    device = ref.device if ref is not None else None
    pipe.register_modules(
        image_encoder=image_encoder(src, dtype=dtype, device=device), feature_extractor=clip_image_processor()
    )
    return pipe
