"""ICTHPTextEncoderSwap (ICT text tower into an SD2.x CLIP) and ICTHPCLIPVision (ICT/HP image encoder)."""

from __future__ import annotations

import json
import os
import re
import tempfile

import comfy.clip_vision
import torch
from comfy_api.latest import io

from icthp_core.dtypes import DTYPE_CHOICES, parse_dtype

from .cache import LRUCache
from .paths import resolve_source, source_fingerprint, source_options, vision_source_options

CATEGORY = "ICT-HP"
SD2_PREFIX = "clip_h.transformer."
_LAYER_RE = re.compile(r"^clip_h\.transformer\.text_model\.encoder\.layers\.(\d+)\.")
_IGNORED = ("position_ids",)  # buffers some checkpoints carry and ComfyUI's CLIP has no weight for
_text_cache: LRUCache[dict] = LRUCache(2)
_vision_cache: LRUCache[comfy.clip_vision.ClipVisionModel] = LRUCache(2)


def _cached(cache: LRUCache, key: tuple, build):
    return cache.get_or_build(key, build)


def sd2_text_layers(clip) -> int:
    """Number of transformer layers of an SD2.x (OpenCLIP ViT-H) CLIP; raises for other CLIPs."""
    keys = clip.cond_stage_model.state_dict().keys()
    layers = {int(m.group(1)) for k in keys if (m := _LAYER_RE.match(k))}
    if not layers:
        heads = sorted({k.split(".", 1)[0] for k in keys})
        raise ValueError(
            f"ICTHPTextEncoderSwap needs an SD2.x CLIP (OpenCLIP ViT-H text encoder, keys "
            f"{SD2_PREFIX}*); this CLIP holds {heads}"
        )
    return max(layers) + 1


def text_swap_patches(clip, hf_sd: dict[str, torch.Tensor], source: str) -> dict:
    """``{clip key: ("set", (w,))}`` covering every text-tower weight of ``clip``; raises on any gap."""
    clip_sd = clip.cond_stage_model.state_dict()
    targets = {
        k: v for k, v in clip_sd.items() if k.startswith(SD2_PREFIX + "text_model.") and not k.endswith(_IGNORED)
    }
    given = {SD2_PREFIX + k: v for k, v in hf_sd.items() if not k.endswith(_IGNORED)}
    missing = sorted(set(targets) - set(given))
    extra = sorted(set(given) - set(targets))
    wrong = sorted(k for k in set(targets) & set(given) if tuple(targets[k].shape) != tuple(given[k].shape))
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} CLIP weights missing from the ICT text encoder (e.g. {missing[:3]})")
        if extra:
            parts.append(f"{len(extra)} ICT weights with no place in the CLIP (e.g. {extra[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: CLIP {tuple(targets[k].shape)} vs "
                f"ICT {tuple(given[k].shape)})"
            )
        raise ValueError(f"ICT text encoder from {source} does not fit this CLIP: " + "; ".join(parts))
    return {k: ("set", (v,)) for k, v in given.items()}


def swap_text_encoder(clip, source: str):
    """A clone of ``clip`` whose text tower is the ICT text tower (the input CLIP is left unchanged)."""
    from icthp_core.checkpoints.transfer import text_encoder_state_dict

    layers = sd2_text_layers(clip)
    try:
        hf_sd = _cached(
            _text_cache,
            (source, source_fingerprint(source), layers),
            lambda: text_encoder_state_dict(source, num_layers=layers),
        )
    except ValueError as e:
        raise ValueError(f"ICT text encoder from {source} does not fit this CLIP ({layers} layers): {e}") from e
    patches = text_swap_patches(clip, hf_sd, source)
    new = clip.clone()
    applied = set(new.add_patches(patches, 1.0))
    missed = sorted(set(patches) - applied)
    if missed:
        raise RuntimeError(f"ICT text encoder: {len(missed)} weights were not applied (e.g. {missed[:3]})")
    return new


class ICTHPTextEncoderSwap(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ICTHPTextEncoderSwap",
            display_name="ICT-HP Text Encoder Swap (SD2.x)",
            category=CATEGORY,
            description="Returns a copy of an SD2.x CLIP whose text encoder is the ICT text encoder "
            "(paper Fig. 7). Clip-skip (CLIP Set Last Layer) is kept; the input CLIP is unchanged.",
            inputs=[io.Clip.Input("clip"), io.Combo.Input("ict_source", options=source_options("ict"))],
            outputs=[io.Clip.Output(display_name="CLIP")],
        )

    @classmethod
    def execute(cls, clip, ict_source) -> io.NodeOutput:
        return io.NodeOutput(swap_text_encoder(clip, resolve_source(ict_source)))

    @classmethod
    def fingerprint_inputs(cls, ict_source, **kwargs):
        return source_fingerprint(ict_source)


def clip_vision_config(source: str, config_path: str | None = None) -> dict:
    """ComfyUI CLIP_VISION JSON config: from ``config_path`` (HF CLIPVisionConfig or CLIPConfig JSON) or from
    the model's ``config.json`` (ViT-H/14 when absent)."""
    if config_path:
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"CLIP vision config not found: {config_path}")
        with open(config_path) as f:
            cfg = json.load(f)
    else:
        from icthp_core.checkpoints.transfer import hf_clip_config

        cfg = hf_clip_config(source)
    vision = dict(cfg.get("vision_config", cfg))
    if "projection_dim" in cfg:
        vision["projection_dim"] = cfg["projection_dim"]
    out = {
        "model_type": "clip_vision_model",
        "num_channels": 3,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "image_size": 224,
        "projection_dim": 1024,
    }
    out.update(
        {
            k: v
            for k, v in vision.items()
            if k
            in (
                "hidden_size",
                "image_size",
                "intermediate_size",
                "num_attention_heads",
                "num_hidden_layers",
                "patch_size",
                "projection_dim",
                "hidden_act",
                "layer_norm_eps",
                "num_channels",
            )
        }
    )
    missing = [
        k
        for k in (
            "hidden_size",
            "intermediate_size",
            "num_attention_heads",
            "num_hidden_layers",
            "patch_size",
        )
        if k not in out
    ]
    if missing:
        raise ValueError(f"CLIP vision config of {config_path or source} lacks {missing}")
    return out


def load_clip_vision(
    source: str, dtype: str = "default", config_path: str | None = None
) -> comfy.clip_vision.ClipVisionModel:
    """ComfyUI ClipVisionModel holding the ICT or HP image encoder; every weight must load."""
    from icthp_core.checkpoints.transfer import vision_encoder_state_dict

    cfg = clip_vision_config(source, config_path)
    sd = vision_encoder_state_dict(source)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cfg, f)
    try:
        cv = comfy.clip_vision.ClipVisionModel(f.name)
    finally:
        os.unlink(f.name)
    if dtype != "default":
        cv.dtype = parse_dtype(dtype)
        cv.model.to(cv.dtype)
    sd = {k: v for k, v in sd.items() if not k.endswith(_IGNORED)}
    model_keys = {k for k in cv.model.state_dict() if not k.endswith(_IGNORED)}
    wrong = sorted(k for k, v in cv.model.state_dict().items() if k in sd and tuple(v.shape) != tuple(sd[k].shape))
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"image encoder from {source} does not fit config {cfg}: {len(wrong)} shape mismatches "
            f"(e.g. {k}: {tuple(sd[k].shape)} vs {tuple(cv.model.state_dict()[k].shape)})"
        )
    missing, unexpected = cv.load_sd(sd)
    missing = sorted(set(missing) & model_keys)
    if missing or unexpected:
        raise ValueError(
            f"image encoder from {source}: missing {missing[:5]} ({len(missing)}), unexpected "
            f"{sorted(unexpected)[:5]} ({len(unexpected)})"
        )
    return cv


class ICTHPCLIPVision(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ICTHPCLIPVision",
            display_name="ICT-HP CLIP Vision (image encoder)",
            category=CATEGORY,
            description="The ICT or HP image encoder (CLIP ViT-H/14) as a CLIP_VISION, e.g. for IP-Adapter "
            "style transfer (InstantStyle).",
            inputs=[
                io.Combo.Input("source", options=vision_source_options()),
                io.Combo.Input(
                    "dtype",
                    options=["default", *DTYPE_CHOICES],
                    default="default",
                    tooltip="default = ComfyUI's text-encoder dtype (fp16 unless --fp32-text-enc)",
                ),
                io.String.Input(
                    "config_json",
                    default="",
                    optional=True,
                    tooltip="optional HF CLIP(Vision)Config JSON path for non-ViT-H encoders",
                ),
            ],
            outputs=[io.ClipVision.Output(display_name="CLIP_VISION")],
        )

    @classmethod
    def execute(cls, source, dtype="default", config_json="") -> io.NodeOutput:
        kind, _, name = source.partition(": ")
        if kind not in ("ICT", "HP") or not name:
            raise ValueError(f"source must look like 'ICT: <folder or hub id>' or 'HP: ...', got {source!r}")
        src = resolve_source(name)
        config_json = (config_json or "").strip() or None
        key = (src, source_fingerprint(src), dtype, config_json)
        return io.NodeOutput(_cached(_vision_cache, key, lambda: load_clip_vision(src, dtype, config_json)))

    @classmethod
    def fingerprint_inputs(cls, source, dtype="default", config_json="", **kwargs):
        return (source_fingerprint(source.partition(": ")[2] or source), dtype, config_json)
