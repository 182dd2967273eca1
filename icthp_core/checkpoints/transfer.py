"""ICT/HP towers as HF-keyed state dicts, for putting them into other pipelines (SD2.x text encoder, IP-Adapter)."""

from __future__ import annotations

import os
import re
from typing import Any

import torch

from icthp_core.checkpoints.config import CLIP_WEIGHT_NAMES, HP_BACKBONE_NAMES, read_hf_config
from icthp_core.checkpoints.convert import HF_HARMLESS_KEYS, hf_to_open_clip, is_hf_clip, open_clip_to_hf
from icthp_core.checkpoints.hub import resolve_file
from icthp_core.checkpoints.loading import read_clip_state_dict
from icthp_core.errors import CheckpointError, ConfigError

_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.")


def _weights_file(src: str | os.PathLike):
    """The CLIP weights of an ICT source, or of an HP source's `hp_backbone/`."""
    found = resolve_file(src, CLIP_WEIGHT_NAMES, required=False)
    if found is None:
        found = resolve_file(src, HP_BACKBONE_NAMES)
    assert found is not None
    return found


def hf_clip_config(src: str | os.PathLike) -> dict[str, Any]:
    """The HF CLIPConfig dict of an ICT or HP source (`config.json`, or the ViT-H/14 default)."""
    file = _weights_file(src)
    cfg = file.parent / "config.json"
    if not cfg.is_file() and not os.path.exists(src):
        name = "hp_backbone/config.json" if file.parent.name == "hp_backbone" else "config.json"
        cfg = resolve_file(src, (name,), required=False)
    return read_hf_config(cfg)


def _hf_state_dict(src: str | os.PathLike, vision_only: bool) -> dict[str, torch.Tensor]:
    file = _weights_file(src)
    sd = read_clip_state_dict(file, vision_only=vision_only)  # validates keys, open_clip layout
    return open_clip_to_hf(sd)


def text_encoder_state_dict(src: str | os.PathLike, num_layers: int | None = None) -> dict[str, torch.Tensor]:
    """The text tower in HF `CLIPTextModel` keys (`text_model.*`, no projection, no position_ids).

    `num_layers` keeps only the first layers (23 for diffusers' SD2.x text encoder, which drops the last one);
    `final_layer_norm` is kept.
    """
    sd = {k: v for k, v in _hf_state_dict(src, vision_only=False).items() if k.startswith("text_model.")}
    if not sd:
        raise CheckpointError(f"{src}: the checkpoint has no text tower")
    if num_layers is not None:
        have = 1 + max(int(m.group(1)) for k in sd if (m := _LAYER.match(k)))
        if not 0 < num_layers <= have:
            raise ConfigError(f"num_layers={num_layers}: the text tower of {src} has {have} layers")
        sd = {k: v for k, v in sd.items() if not (m := _LAYER.match(k)) or int(m.group(1)) < num_layers}
    return sd


def vision_encoder_state_dict(src: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The image tower in HF `CLIPVisionModelWithProjection` keys (`vision_model.*`, `visual_projection.weight`)."""
    return _hf_state_dict(src, vision_only=True)


__all__ = [
    "hf_clip_config",
    "text_encoder_state_dict",
    "vision_encoder_state_dict",
    "HF_HARMLESS_KEYS",
    "hf_to_open_clip",
    "is_hf_clip",
]
