"""Key conversion between Hugging Face `CLIPModel` state dicts and open_clip `CLIP` state dicts.

HF stores q/k/v projections separately and projections as [out, in] Linear weights; open_clip fuses q/k/v into
`in_proj_weight` and stores projections as [in, out] matrices.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

#: Buffers old transformers versions saved; they carry no learned state.
HF_HARMLESS_KEYS = re.compile(r"^(text_model|vision_model)\.embeddings\.position_ids$")

_LAYER_MAP = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}
_HF_LAYER = re.compile(r"^(text_model|vision_model)\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_TOWER_PREFIX = {"text_model": "transformer.resblocks", "vision_model": "visual.transformer.resblocks"}
_FLAT = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}


def is_hf_clip(sd: Mapping[str, torch.Tensor]) -> bool:
    """True when the keys look like a HF CLIPModel (possibly vision-only)."""
    return any(k.startswith(("vision_model.", "text_model.")) for k in sd)


def hf_to_open_clip(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Convert HF CLIPModel keys to open_clip keys.

    Returns the converted dict and the HF keys that have no open_clip counterpart (harmless buffers excluded),
    so callers can report them.
    """
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if HF_HARMLESS_KEYS.match(key):
            continue
        if key in _FLAT:
            out[_FLAT[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t()
        elif m := _HF_LAYER.match(key):
            tower, idx, sub, kind = m.groups()
            prefix = f"{_TOWER_PREFIX[tower]}.{idx}"
            if sub in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((prefix, kind), {})[sub[-6]] = value  # "self_attn.q_proj"[-6] == "q"
            elif sub in _LAYER_MAP:
                out[f"{prefix}.{_LAYER_MAP[sub]}.{kind}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            # leave the incomplete set out: the strict loader reports the missing in_proj key
            continue
        out[f"{prefix}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out, unknown


_REV_FLAT = {v: k for k, v in _FLAT.items()}
_REV_TRANSPOSED = {v: k for k, v in _TRANSPOSED.items()}
_REV_LAYER = {v: k for k, v in _LAYER_MAP.items()}
_OC_LAYER = re.compile(r"^(visual\.transformer|transformer)\.resblocks\.(\d+)\.(.+)\.(weight|bias)$")
_OC_IN_PROJ = re.compile(r"^(visual\.transformer|transformer)\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$")


def open_clip_to_hf(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert open_clip CLIP (or `visual.*`-only) keys to HF CLIPModel keys. Unknown keys raise KeyError."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key == "attn_mask":
            continue
        if key in _REV_FLAT:
            out[_REV_FLAT[key]] = value
        elif key in _REV_TRANSPOSED:
            out[_REV_TRANSPOSED[key]] = value.t().contiguous()
        elif m := _OC_IN_PROJ.match(key):
            tower, idx, kind = m.groups()
            hf = f"{'vision_model' if tower.startswith('visual') else 'text_model'}.encoder.layers.{idx}.self_attn"
            for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                out[f"{hf}.{name}_proj.{kind}"] = part.contiguous()
        elif m := _OC_LAYER.match(key):
            tower, idx, sub, kind = m.groups()
            if sub not in _REV_LAYER:
                raise KeyError(f"open_clip key {key!r} has no HF CLIPModel counterpart")
            hf_tower = "vision_model" if tower.startswith("visual") else "text_model"
            out[f"{hf_tower}.encoder.layers.{idx}.{_REV_LAYER[sub]}.{kind}"] = value
        else:
            raise KeyError(f"open_clip key {key!r} has no HF CLIPModel counterpart")
    return out
