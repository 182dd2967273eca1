"""CLIP architecture configs (the Hugging Face `CLIPConfig` layout and its open_clip equivalent) and the file names
of the published checkpoint layouts. Light: no torch, no open_clip."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from icthp_core.errors import CheckpointError

#: file names of a CLIP checkpoint in a folder or hub repo, in the order they are looked for
CLIP_WEIGHT_NAMES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_pytorch_model.bin",
    "open_clip_model.safetensors",
)
#: the HP repo's layout: the vision tower under hp_backbone/, the MLP head under hp_scorer/
HP_BACKBONE_NAMES = tuple(f"hp_backbone/{n}" for n in CLIP_WEIGHT_NAMES)
HP_HEAD_NAMES = ("hp_scorer/mlp.safetensors", "hp_scorer/mlp_pytorch_model.bin")

#: HF config of LAION CLIP ViT-H/14 (laion/CLIP-ViT-H-14-laion2B-s32B-b79K), the ICT/HP/PickScore backbone.
VIT_H_14: dict[str, Any] = {
    "projection_dim": 1024,
    "logit_scale_init_value": 2.6592,
    "text_config": {
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 1024,
    },
    "vision_config": {
        "image_size": 224,
        "patch_size": 14,
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 1024,
        "num_channels": 3,
    },
}

#: HF config of OpenAI CLIP ViT-L/14 (openai/clip-vit-large-patch14), the LAION aesthetic predictor's backbone.
VIT_L_14_OPENAI: dict[str, Any] = {
    "projection_dim": 768,
    "logit_scale_init_value": 2.6592,
    "text_config": {
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 768,
    },
    "vision_config": {
        "image_size": 224,
        "patch_size": 14,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 768,
        "num_channels": 3,
    },
}

_SUPPORTED_ACTS = {"gelu", "quick_gelu"}


def read_hf_config(path: str | Path | None, default: dict[str, Any] = VIT_H_14) -> dict[str, Any]:
    """Read `config.json` (a file or a directory holding one); fall back to `default` when absent."""
    if path is not None:
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if file.is_file():
            try:
                cfg = json.loads(file.read_bytes().decode("utf-8-sig"))
            except UnicodeDecodeError as e:
                bad = f"byte 0x{e.object[e.start]:02x} at offset {e.start}"
                raise CheckpointError(f"{file}: not UTF-8 ({bad}); save it as UTF-8") from None
            except (OSError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{file}: not a readable JSON config ({e})") from None
            if not isinstance(cfg, dict):
                raise CheckpointError(f"{file}: expected a JSON object, got {type(cfg).__name__}")
            return _fill_defaults(cfg, file)
    return copy.deepcopy(default)


#: `transformers` class defaults, used for fields a saved config.json omits (save_pretrained writes diffs only).
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "text_config": {
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 8,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    },
    "vision_config": {
        "image_size": 224,
        "patch_size": 32,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "num_channels": 3,
    },
}


def _fill_defaults(cfg: dict[str, Any], file: Path) -> dict[str, Any]:
    if "vision_config" not in cfg and "text_config" not in cfg:
        raise CheckpointError(f"{file}: not a CLIPModel config (no 'vision_config'/'text_config')")
    out = copy.deepcopy(cfg)
    for tower, defaults in _HF_DEFAULTS.items():
        given = cfg.get(tower) or {}
        if not isinstance(given, dict):
            raise CheckpointError(f"{file}: '{tower}' must be an object, got {type(given).__name__}")
        out[tower] = {**defaults, **given}
        for key, default in defaults.items():
            value = out[tower][key]
            kind = (int, float) if isinstance(default, float) else type(default)
            if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, int) and value < 0):
                raise CheckpointError(f"{file}: '{tower}.{key}' = {value!r} is not a valid {type(default).__name__}")
    out.setdefault("projection_dim", 512)
    if not isinstance(out["projection_dim"], int) or isinstance(out["projection_dim"], bool):
        raise CheckpointError(f"{file}: 'projection_dim' = {out['projection_dim']!r} is not a valid int")
    return out


def open_clip_cfg(hf_cfg: dict[str, Any]) -> dict[str, Any]:
    """Translate a HF `CLIPConfig` dict into open_clip `CLIP(**cfg)` keyword arguments."""
    v, t = hf_cfg["vision_config"], hf_cfg["text_config"]
    acts = {v.get("hidden_act", "gelu"), t.get("hidden_act", "gelu")}
    if not acts <= _SUPPORTED_ACTS or len(acts) != 1:
        raise CheckpointError(f"unsupported CLIP activation(s) {sorted(acts)}; expected one of {_SUPPORTED_ACTS}")
    for name, tower in (("vision_config", v), ("text_config", t)):
        if float(tower.get("layer_norm_eps", 1e-5)) != 1e-5:
            raise CheckpointError(f"{name}.layer_norm_eps={tower['layer_norm_eps']} is not supported (1e-5 only)")
    if v["hidden_size"] % v["num_attention_heads"]:
        raise CheckpointError("vision_config.hidden_size is not a multiple of num_attention_heads")
    vision_cfg = {
        "layers": v["num_hidden_layers"],
        "width": v["hidden_size"],
        "head_width": v["hidden_size"] // v["num_attention_heads"],
        "mlp_ratio": v["intermediate_size"] / v["hidden_size"],
        "patch_size": v["patch_size"],
        "image_size": v["image_size"],
    }
    text_cfg = {
        "context_length": t["max_position_embeddings"],
        "vocab_size": t["vocab_size"],
        "width": t["hidden_size"],
        "heads": t["num_attention_heads"],
        "layers": t["num_hidden_layers"],
        "mlp_ratio": t["intermediate_size"] / t["hidden_size"],
    }
    return {
        "embed_dim": hf_cfg["projection_dim"],
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
        "quick_gelu": acts == {"quick_gelu"},
    }
