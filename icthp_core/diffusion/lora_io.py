"""Reading and validating diffusers-format LoRA files (as written by ``train/draft_lora.py``).

Key format (diffusers ``save_lora_weights``): ``<component>.<module>.lora_A.weight`` ([rank, in]),
``<component>.<module>.lora_B.weight`` ([out, rank]) and optional ``<component>.<module>.alpha``, where
``<component>`` is ``transformer``, ``text_encoder`` or ``text_encoder_2``. The weight delta of a module is
``strength * alpha / rank * B @ A`` (``alpha = rank``, i.e. scale 1, when the file gives no alpha).

Alpha is taken, in order, from the per-module ``.alpha`` tensor, the ``icthp.alpha`` metadata, the
diffusers ``lora_adapter_metadata`` (``<component>.lora_alpha``), else scale 1.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from icthp_core.errors import LoraFormatError, WeightsNotFoundError

__all__ = [
    "COMPONENTS",
    "LoraFile",
    "LoraFormatError",
    "LoraModule",
    "describe",
    "read_lora",
    "to_comfy_state_dict",
]

COMPONENTS = ("transformer", "text_encoder", "text_encoder_2")
_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B", ".alpha": "alpha"}
ICTHP_METADATA = ("base_model", "base_arch", "reward", "variant", "k", "steps", "rank", "alpha")


@dataclass(frozen=True)
class LoraModule:
    """One low-rank pair: ``down`` = ``lora_A`` [rank, in], ``up`` = ``lora_B`` [out, rank]."""

    name: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def component(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def delta(self, strength: float = 1.0) -> torch.Tensor:
        """``strength * scale * up @ down`` in float32."""
        return strength * self.scale * (self.up.float() @ self.down.float())


@dataclass
class LoraFile:
    path: Path
    modules: dict[str, LoraModule]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def components(self) -> list[str]:
        return sorted({m.component for m in self.modules.values()})

    @property
    def ranks(self) -> list[int]:
        return sorted({m.rank for m in self.modules.values()})

    @property
    def base_arch(self) -> str | None:
        return self.metadata.get("icthp.base_arch")

    def component_modules(self, component: str) -> dict[str, LoraModule]:
        return {k: m for k, m in self.modules.items() if m.component == component}


def _float_meta(meta: dict[str, str], key: str, path: Path) -> float | None:
    if key not in meta or meta[key] in ("", "None", "null"):
        return None
    try:
        return float(meta[key])
    except ValueError:
        raise LoraFormatError(f"{path}: metadata {key}={meta[key]!r} is not a number") from None


def _adapter_alphas(meta: dict[str, str], path: Path) -> dict[str, float]:
    """Per-component ``lora_alpha`` from diffusers' ``lora_adapter_metadata`` JSON."""
    raw = meta.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LoraFormatError(f"{path}: metadata lora_adapter_metadata is not JSON ({e})") from None
    out: dict[str, float] = {}
    for comp in COMPONENTS:
        if data.get(f"{comp}.alpha_pattern") or data.get(f"{comp}.rank_pattern"):
            raise LoraFormatError(
                f"{path}: per-module alpha_pattern/rank_pattern in lora_adapter_metadata ({comp}) is not supported"
            )
        if data.get(f"{comp}.lora_alpha") is not None:
            out[comp] = float(data[f"{comp}.lora_alpha"])
    return out


def read_lora(path: str | os.PathLike) -> LoraFile:
    """Read and validate a diffusers-format LoRA ``.safetensors`` file.

    Raises ``FileNotFoundError`` or ``LoraFormatError`` (unknown keys, unpaired A/B, bad shapes,
    rank disagreeing with the ``icthp.rank`` metadata).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"LoRA file not found: {path}")
    if path.suffix != ".safetensors":
        raise LoraFormatError(f"{path}: expected a .safetensors LoRA file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise LoraFormatError(f"{path}: not a readable safetensors file ({e})") from e
    if not tensors:
        raise LoraFormatError(f"{path}: the file holds no tensors")

    parts: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for key, t in tensors.items():
        for suffix, role in _SUFFIXES.items():
            if key.endswith(suffix):
                parts.setdefault(key[: -len(suffix)], {})[role] = t
                break
        else:
            unknown.append(key)
    if unknown:
        raise LoraFormatError(
            f"{path}: {len(unknown)} keys are not diffusers LoRA keys "
            f"(<module>.lora_A.weight / .lora_B.weight / .alpha), e.g. {sorted(unknown)[:5]}"
        )
    bad_comp = sorted({n.split(".", 1)[0] for n in parts} - set(COMPONENTS))
    if bad_comp:
        raise LoraFormatError(f"{path}: unknown key prefixes {bad_comp}; expected one of {list(COMPONENTS)}")

    meta_alpha = _float_meta(meta, "icthp.alpha", path)
    meta_rank = _float_meta(meta, "icthp.rank", path)
    adapter_alpha = _adapter_alphas(meta, path)
    modules: dict[str, LoraModule] = {}
    for name, p in sorted(parts.items()):
        if "A" not in p or "B" not in p:
            missing = "lora_A" if "A" not in p else "lora_B"
            raise LoraFormatError(f"{path}: module {name} has no {missing}.weight")
        down, up = p["A"], p["B"]
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1]:
            raise LoraFormatError(
                f"{path}: module {name}: lora_A {tuple(down.shape)} and lora_B "
                f"{tuple(up.shape)} are not a [rank,in] / [out,rank] pair"
            )
        if meta_rank is not None and down.shape[0] != int(meta_rank):
            raise LoraFormatError(
                f"{path}: module {name} has rank {down.shape[0]} but metadata icthp.rank={meta['icthp.rank']}"
            )
        if "alpha" in p:
            if p["alpha"].numel() != 1:
                raise LoraFormatError(f"{path}: {name}.alpha must be a scalar, shape {tuple(p['alpha'].shape)}")
            alpha = float(p["alpha"].item())
        elif meta_alpha is not None:
            alpha = meta_alpha
        else:
            alpha = adapter_alpha.get(name.split(".", 1)[0])
        modules[name] = LoraModule(name=name, down=down, up=up, alpha=alpha)
    return LoraFile(path=path, modules=modules, metadata=meta)


def to_comfy_state_dict(lora: LoraFile, component: str | None = None) -> dict[str, torch.Tensor]:
    """Keys ``<module>.lora_A.weight`` / ``.lora_B.weight`` / ``.alpha`` with an explicit alpha for every
    module (``alpha = rank`` when the file gives none), so ComfyUI's ``alpha / rank`` scale equals ours."""
    out: dict[str, torch.Tensor] = {}
    for name, m in lora.modules.items():
        if component is not None and m.component != component:
            continue
        out[f"{name}.lora_A.weight"] = m.down
        out[f"{name}.lora_B.weight"] = m.up
        out[f"{name}.alpha"] = torch.tensor(float(m.rank if m.alpha is None else m.alpha))
    return out


def describe(lora: LoraFile) -> str:
    """Human-readable summary: file, metadata (base model, reward, steps, ...), modules, ranks, scales."""
    lines = [f"file: {lora.path.name}"]
    for key in ICTHP_METADATA:
        if f"icthp.{key}" in lora.metadata:
            lines.append(f"{key}: {lora.metadata[f'icthp.{key}']}")
    for comp in lora.components:
        mods = lora.component_modules(comp)
        scales = sorted({round(m.scale, 6) for m in mods.values()})
        lines.append(
            f"{comp}: {len(mods)} modules, rank {sorted({m.rank for m in mods.values()})}, scale alpha/rank {scales}"
        )
    return "\n".join(lines)
