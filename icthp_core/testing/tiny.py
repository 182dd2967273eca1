"""Tiny random models in the published layouts, for tests and offline examples (needs `transformers`)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

from icthp_core.checkpoints.files import save_state_dict
from icthp_core.scoring.models import HPHead

TINY_CLIP: dict[str, Any] = {
    "projection_dim": 16,
    "text_config": {
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 16,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
    },
    "vision_config": {
        "image_size": 224,
        "patch_size": 32,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 16,
        "num_channels": 3,
    },
}


def tiny_clip_config(**overrides: Any) -> dict[str, Any]:
    """A HF CLIPConfig dict of a tiny CLIP; `overrides` update top level, `text_config`/`vision_config` merge."""
    cfg = copy.deepcopy(TINY_CLIP)
    for k, v in overrides.items():
        if k in ("text_config", "vision_config"):
            cfg[k].update(v)
        else:
            cfg[k] = v
    return cfg


def tiny_hf_clip(seed: int = 0, config: dict[str, Any] | None = None):
    """A randomly initialised `transformers.CLIPModel` (weights perturbed so no layer is trivial)."""
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(**(config or tiny_clip_config()))
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
                p.add_(torch.randn_like(p) * 0.1)  # non-trivial LayerNorm affine, so key mix-ups show
            elif name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.02)
    return model


def save_tiny_clip(
    directory: str | Path,
    seed: int = 0,
    fmt: str = "bin",
    config: dict[str, Any] | None = None,
    with_position_ids: bool = True,
) -> Path:
    """Save a tiny CLIPModel state dict as `pytorch_model.bin` (or `model.safetensors`) + `config.json`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = config or tiny_clip_config()
    sd = dict(tiny_hf_clip(seed, cfg).state_dict())
    if with_position_ids:  # as transformers 4.27 saved them
        sd["text_model.embeddings.position_ids"] = torch.arange(cfg["text_config"]["max_position_embeddings"])[None]
        n = (cfg["vision_config"]["image_size"] // cfg["vision_config"]["patch_size"]) ** 2 + 1
        sd["vision_model.embeddings.position_ids"] = torch.arange(n)[None]
    name = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
    save_state_dict(sd, directory / name)
    (directory / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip", **cfg}))
    return directory


def tiny_head(in_dim: int, seed: int = 1, dims: tuple[int, ...] = (32, 16, 8, 4, 1)) -> HPHead:
    torch.manual_seed(seed)
    head = HPHead((in_dim, *dims))
    return head.eval()


def save_tiny_ict(directory: str | Path, seed: int = 0, fmt: str = "bin") -> Path:
    """A tiny ICT checkpoint in the published layout (`<dir>/pytorch_model.bin` + `config.json`)."""
    return save_tiny_clip(directory, seed=seed, fmt=fmt)


def save_tiny_hp(directory: str | Path, seed: int = 1, fmt: str = "bin") -> Path:
    """A tiny HP checkpoint: `hp_backbone/{pytorch_model.bin,config.json}`, `hp_scorer/mlp_pytorch_model.bin`."""
    directory = Path(directory)
    save_tiny_clip(directory / "hp_backbone", seed=seed, fmt=fmt)
    head = tiny_head(TINY_CLIP["projection_dim"], seed=seed + 100)
    name = "mlp.safetensors" if fmt == "safetensors" else "mlp_pytorch_model.bin"
    save_state_dict(head.state_dict(), directory / "hp_scorer" / name)
    return directory
