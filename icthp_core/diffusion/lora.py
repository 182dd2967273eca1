"""LoRA adapters for SD3 / FLUX transformers (peft) and LoRA files that diffusers and ComfyUI both load.

Files are written through the pipeline class's `save_lora_weights` (keys
`transformer.<module>.lora_A.weight` / `lora_B.weight`) and carry the `icthp.*` safetensors metadata of
docs/core_api.md. ComfyUI scales a LoRA by `alpha / rank` only when a `<module>.alpha` tensor exists (else 1.0),
diffusers by the `lora_alpha` in the file's adapter metadata: by default a LoRA with `lora_alpha != r` is saved
with its scale folded into `lora_B` (scale 1 everywhere); `alpha_keys=True` writes `.alpha` tensors instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from icthp_core.errors import ConfigError

SD3_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)
FLUX_TARGETS = SD3_TARGETS + ("ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2")
TARGETS = {"sd3": SD3_TARGETS, "flux": FLUX_TARGETS}
METADATA_KEYS = (
    "icthp.base_model",
    "icthp.base_arch",
    "icthp.reward",
    "icthp.variant",
    "icthp.k",
    "icthp.steps",
    "icthp.rank",
    "icthp.alpha",
)
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def detect_arch(transformer: nn.Module) -> str:
    """'sd3' for `SD3Transformer2DModel`, 'flux' for `FluxTransformer2DModel` (by class name)."""
    name = type(transformer).__name__
    if name.startswith("SD3"):
        return "sd3"
    if name.startswith("Flux"):
        return "flux"
    raise ConfigError(
        f"unsupported transformer class {name!r}: expected SD3Transformer2DModel or FluxTransformer2DModel"
    )


def pipeline_class(arch: str):
    """The diffusers pipeline class whose `save_lora_weights` / `load_lora_weights` handle `arch`."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    try:
        return {"sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}[arch]
    except KeyError:
        raise ValueError(f"arch must be 'sd3' or 'flux', got {arch!r}") from None


def lora_config(arch: str, rank: int = 16, alpha: float | None = None, targets: tuple[str, ...] | None = None):
    """`peft.LoraConfig` as the diffusers LoRA scripts build it: attention (FLUX also ff), gaussian init."""
    from peft import LoraConfig

    if rank < 1:
        raise ConfigError(f"rank must be >= 1, got {rank}")
    return LoraConfig(
        r=rank,
        lora_alpha=rank if alpha is None else alpha,
        init_lora_weights="gaussian",
        target_modules=list(targets or TARGETS[arch]),
    )


def add_lora(
    transformer: nn.Module,
    rank: int = 16,
    alpha: float | None = None,
    targets: tuple[str, ...] | None = None,
    adapter_name: str = "default",
) -> list[nn.Parameter]:
    """Freeze `transformer`, add a LoRA adapter, keep its parameters in fp32; returns the trainable parameters."""
    transformer.requires_grad_(False)
    transformer.add_adapter(lora_config(detect_arch(transformer), rank, alpha, targets), adapter_name=adapter_name)
    params = [p for n, p in transformer.named_parameters() if "lora_" in n]
    if not params:
        used = targets or TARGETS[detect_arch(transformer)]
        raise RuntimeError(f"no LoRA parameters were created for target modules {used}")
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


@contextmanager
def adapters_disabled(transformer: nn.Module) -> Iterator[None]:
    """Run the base model (LoRA off) inside the block; re-enables the adapters afterwards."""
    if not getattr(transformer, "_hf_peft_config_loaded", False):
        yield
        return
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


def lora_state_dict(transformer: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """peft state dict of the adapter (keys `<module>.lora_A.weight`, no adapter name), detached, on CPU."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(transformer, adapter_name=adapter_name)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def _rank_alpha(transformer: nn.Module, adapter_name: str) -> tuple[int, float]:
    cfg = transformer.peft_config[adapter_name]
    if cfg.rank_pattern or cfg.alpha_pattern:
        raise ValueError("per-module rank/alpha patterns are not supported when saving")
    if getattr(cfg, "use_dora", False):
        raise ValueError("DoRA adapters are not understood by ComfyUI; train plain LoRA")
    return int(cfg.r), float(cfg.lora_alpha)


def save_lora(
    transformer: nn.Module,
    out_dir: str | Path,
    metadata: Mapping[str, object] | None = None,
    alpha_keys: bool = False,
    weight_name: str = WEIGHT_NAME,
    adapter_name: str = "default",
    dtype: torch.dtype | None = None,
) -> Path:
    """Save the adapter of `transformer` to `out_dir/weight_name` with the pipeline's `save_lora_weights`.

    `metadata`: values for the `icthp.*` keys (rank/alpha/base_arch are filled in); stored as strings.
    `dtype`: cast the saved tensors (e.g. `torch.bfloat16`), default fp32.
    `icthp.alpha` is the alpha that goes with the stored weights (= rank when the scale was folded in).
    `alpha_keys=True` files load in ComfyUI (both archs) and in diffusers for FLUX only (diffusers' SD3 loader
    rejects `.alpha` keys).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    arch = detect_arch(transformer)
    rank, alpha = _rank_alpha(transformer, adapter_name)
    sd = lora_state_dict(transformer, adapter_name)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    cfg = transformer.peft_config[adapter_name].to_dict()
    scale = alpha / rank
    file_alpha = alpha  # the alpha a loader must use with the stored weights
    if alpha_keys:
        for k in [k for k in sd if k.endswith(".lora_A.weight")]:
            sd[k[: -len(".lora_A.weight")] + ".alpha"] = torch.tensor(alpha)
    elif scale != 1.0:  # fold alpha/r into lora_B so that every loader applies scale 1.0
        sd = {k: (v.float() * scale).to(v.dtype) if k.endswith(".lora_B.weight") else v for k, v in sd.items()}
        cfg["lora_alpha"] = rank
        file_alpha = float(rank)
    for k in ("target_modules", "exclude_modules"):  # sets are not JSON
        if isinstance(cfg.get(k), set):
            cfg[k] = sorted(cfg[k])
    out = Path(out_dir)
    cls = pipeline_class(arch)
    cls.save_lora_weights(
        out,
        transformer_lora_layers={k: v for k, v in sd.items() if not k.endswith(".alpha")},
        weight_name=weight_name,
        safe_serialization=True,
        transformer_lora_adapter_metadata=None if alpha_keys else cfg,
    )
    path = out / weight_name
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata() or {})
    if alpha_keys:
        tensors.update({f"transformer.{k}": v for k, v in sd.items() if k.endswith(".alpha")})
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    meta.update({"icthp.base_arch": arch, "icthp.rank": str(rank), "icthp.alpha": str(file_alpha)})
    unknown = sorted(k for k in meta if k.startswith("icthp.") and k not in METADATA_KEYS)
    if unknown:
        raise ValueError(f"unknown icthp metadata keys {unknown}; allowed: {METADATA_KEYS}")
    save_file(tensors, path, metadata=meta)
    return path


def read_lora_metadata(path: str | Path) -> dict[str, str]:
    """The `icthp.*` metadata of a LoRA file (empty dict when absent)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {k: v for k, v in meta.items() if k.startswith("icthp.")}


def lora_file_config(path: str | Path) -> dict:
    """The diffusers adapter metadata (LoraConfig dict) stored in a LoRA file, or {} when absent."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("lora_adapter_metadata")
    return json.loads(raw) if raw else {}
