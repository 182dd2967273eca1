"""Write ICT and HP models in the published layout (HF CLIPModel keys), as safetensors and as `.bin`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from icthp_core.checkpoints.config import VIT_H_14
from icthp_core.checkpoints.convert import open_clip_to_hf
from icthp_core.checkpoints.files import save_state_dict
from icthp_core.scoring.models import HPModel, ICTModel


def _write_config(directory: Path, config: dict[str, Any] | None) -> None:
    cfg = {"architectures": ["CLIPModel"], "model_type": "clip", **(config or VIT_H_14)}
    (directory / "config.json").write_text(json.dumps(cfg, indent=2))


def save_ict(model: ICTModel, out_dir: str | Path, config: dict[str, Any] | None = None) -> Path:
    """`<out>/model.safetensors`, `<out>/pytorch_model.bin` (what upstream reads) and `config.json`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = open_clip_to_hf(model.clip.state_dict())
    save_state_dict(sd, out / "model.safetensors")
    save_state_dict(sd, out / "pytorch_model.bin")
    _write_config(out, config or getattr(model.clip, "hf_config", None))
    return out


def save_hp(model: HPModel, out_dir: str | Path, config: dict[str, Any] | None = None) -> Path:
    """`<out>/hp_backbone/` (vision tower + projection, HF keys) and `<out>/hp_scorer/` (the head)."""
    out = Path(out_dir)
    backbone = out / "hp_backbone"
    backbone.mkdir(parents=True, exist_ok=True)
    sd = open_clip_to_hf({f"visual.{k}": v for k, v in model.visual.state_dict().items()})
    save_state_dict(sd, backbone / "model.safetensors")
    save_state_dict(sd, backbone / "pytorch_model.bin")
    _write_config(backbone, config or getattr(model.visual, "hf_config", None))
    head = model.head.state_dict()
    save_state_dict(head, out / "hp_scorer" / "mlp.safetensors")
    save_state_dict(head, out / "hp_scorer" / "mlp_pytorch_model.bin")
    return out
