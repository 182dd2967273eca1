"""Build open_clip models from published checkpoints, strictly (every key accounted for)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from open_clip.model import CLIP, CLIPVisionCfg, _build_vision_tower

from icthp_core.checkpoints.config import CLIP_WEIGHT_NAMES, VIT_H_14, open_clip_cfg, read_hf_config
from icthp_core.checkpoints.convert import hf_to_open_clip, is_hf_clip, open_clip_to_hf
from icthp_core.checkpoints.files import WEIGHT_SUFFIXES, check_finite, load_state_dict
from icthp_core.checkpoints.hub import resolve_file
from icthp_core.dtypes import DTYPES, parse_dtype  # noqa: F401 - re-exported
from icthp_core.errors import CheckpointError, DeviceError

#: open_clip keys of the text tower (dropped, without error, when only the vision tower is wanted).
_TEXT_PREFIXES = (
    "transformer.",
    "token_embedding.",
    "positional_embedding",
    "ln_final.",
    "text_projection",
    "logit_scale",
    "logit_bias",
    "attn_mask",
)

_HF_TEXT_PREFIXES = ("text_model.", "text_projection.")


def parse_device(device: str | torch.device | None) -> torch.device:
    """`None` → cuda when available, else cpu."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"--device {device!r}: not a device name (cpu, cuda, cuda:1, mps)") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError(f"--device {device}: MPS is not available here")
    return dev


def read_clip_state_dict(
    file: Path, vision_only: bool = False, nested_key: str | None = None
) -> dict[str, torch.Tensor]:
    """Read a CLIP checkpoint in HF or open_clip key layout and return open_clip keys.

    Raises CheckpointError naming `file` and any key that belongs to neither layout.
    """
    text = _TEXT_PREFIXES + _HF_TEXT_PREFIXES
    # vision only: the text tower is never read into memory
    sd = load_state_dict(
        file,
        nested_key=nested_key,
        keep=(lambda k: not k.removeprefix("module.").startswith(text)) if vision_only else None,
    )
    check_finite(sd, file)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    if is_hf_clip(sd):
        sd, unknown = hf_to_open_clip(sd)
        if unknown:
            raise CheckpointError(f"{file}: unexpected keys for a CLIPModel checkpoint: {_fmt(unknown)}")
        return ClipStateDict(sd, hf_layout=True)
    return ClipStateDict(sd)


class ClipStateDict(dict):
    """open_clip-keyed tensors that remember whether the user's file used HF CLIPModel key names."""

    def __init__(self, sd: dict[str, torch.Tensor], hf_layout: bool = False):
        super().__init__(sd)
        self.hf_layout = hf_layout


def _hf_names(keys: set[str] | list[str], prefix: str = "") -> list[str]:
    """HF CLIPModel names of open_clip keys (an attention in_proj is the q/k/v projections); unknown kept."""
    out: set[str] = set()
    for k in keys:
        try:
            out.update(open_clip_to_hf({prefix + k: torch.empty(3)}))
        except KeyError:
            out.add(k)
    return sorted(out)


def _fmt(keys: list[str] | set[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def build_clip(hf_cfg: dict[str, Any], vision_only: bool = False) -> torch.nn.Module:
    """An un-initialised (meta-device) open_clip CLIP, or its vision tower, for a HF config."""
    cfg = open_clip_cfg(hf_cfg)
    with torch.device("meta"):
        if vision_only:
            return _build_vision_tower(cfg["embed_dim"], CLIPVisionCfg(**cfg["vision_cfg"]), cfg["quick_gelu"], None)
        return CLIP(**cfg)


def load_into(
    model: torch.nn.Module, sd: dict[str, torch.Tensor], file: Path | str, key_prefix: str = ""
) -> torch.nn.Module:
    """Load `sd` into a meta-device `model` strictly, materialising it; errors name `file` and the keys.

    Keys are reported as written in the user's file: HF CLIPModel names when `sd` came from a HF-layout file
    (`key_prefix` is what was stripped from the open_clip names, e.g. "visual." for a vision tower).
    """
    expected = set(model.state_dict())
    missing, unexpected = expected - set(sd), set(sd) - expected
    if getattr(sd, "hf_layout", False):
        missing, unexpected = set(_hf_names(missing, key_prefix)), set(_hf_names(unexpected, key_prefix))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_fmt(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_fmt(unexpected)}")
        raise CheckpointError(f"{file}: checkpoint does not match the model architecture; " + "; ".join(parts))
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{file}: {e}") from e
    if isinstance(model, CLIP):
        ctx = model.positional_embedding.shape[0]
        model.attn_mask = torch.full((ctx, ctx), float("-inf")).triu_(1)
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise CheckpointError(f"{file}: tensors left uninitialised: {_fmt(leftovers)}")
    return model


def load_clip(
    src: str | os.PathLike,
    vision_only: bool = False,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "fp32",
    hf_config: dict[str, Any] | None = None,
    default_config: dict[str, Any] = VIT_H_14,
    nested_key: str | None = None,
    filenames: tuple[str, ...] = CLIP_WEIGHT_NAMES,
) -> torch.nn.Module:
    """Load an open_clip CLIP (or only its vision tower) from a HF-layout or open_clip-layout checkpoint.

    `src`: a weights file, a directory holding one (+ optional `config.json`), or a hub repo id.
    The architecture comes from `hf_config`, else `config.json` beside the weights, else `default_config`.
    `filenames`: the weight file names looked for in a directory or hub repo, in order of preference.
    """
    file = resolve_file(src, filenames)
    assert file is not None
    if file.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{file}: unsupported weights file type (expected one of {WEIGHT_SUFFIXES})")
    if hf_config is None:
        cfg_file = (
            file.parent / "config.json" if Path(src).exists() else resolve_file(src, ["config.json"], required=False)
        )
        hf_config = read_hf_config(cfg_file, default=default_config)
    sd = read_clip_state_dict(file, vision_only=vision_only, nested_key=nested_key)
    if vision_only:
        sd = ClipStateDict({k.removeprefix("visual."): v for k, v in sd.items()}, getattr(sd, "hf_layout", False))
    model = load_into(build_clip(hf_config, vision_only=vision_only), sd, file, "visual." if vision_only else "")
    model.hf_config = hf_config  # type: ignore[attr-defined]
    return model.to(device=parse_device(device), dtype=parse_dtype(dtype)).eval().requires_grad_(False)
