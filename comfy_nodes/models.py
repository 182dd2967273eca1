"""Reward models managed by ComfyUI: loading (cached), ModelPatcher wrapping and batched scoring."""

from __future__ import annotations

from dataclasses import dataclass, field

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import numpy as np
import torch

from icthp_core.dtypes import DTYPE_CHOICES, parse_dtype
from icthp_core.scoring.registry import list_metrics
from icthp_core.scoring.scorer import MultiScorer

from .cache import LRUCache
from .paths import free_text_source, resolve_source, source_fingerprint

MODEL_CHOICES = ["ICT-HP", "ICT", "HP"]


def baselines() -> list[str]:
    """Every registered metric other than ICT, HP and ICT-HP, read from the core registry at each call."""
    return [m for m in list_metrics() if m not in ("ict", "hp", "ict_hp")]


DTYPES = list(DTYPE_CHOICES)
DEVICES = ["default", "cpu"]
_CACHE_SIZE = 4


class _Holder(torch.nn.Module):
    """Gives ModelPatcher one nn.Module owning every sub-model (moved to/from the GPU together)."""

    def __init__(self, parts: dict[str, torch.nn.Module]):
        super().__init__()
        for name, mod in parts.items():
            if mod is not None:
                self.add_module(name.replace(".", "_"), mod)  # e.g. "hpsv2.1"


@dataclass
class RewardModel:
    """The value carried by ``ICTHP_MODEL`` sockets."""

    name: str
    metrics: list[str]  # metrics score() returns; metrics[0] is the primary one
    impl: MultiScorer  # icthp_core scorer: ICT / HP / ICT-HP, or one baseline
    patcher: comfy.model_patcher.ModelPatcher
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def primary(self) -> str:
        return self.metrics[0]

    @property
    def needs_prompt(self) -> bool:
        return bool(self.impl.needs_prompt)

    def load(self) -> torch.device:
        """Load to ComfyUI's device (offloading other models as needed); returns the compute device."""
        mm.load_models_gpu([self.patcher], force_full_load=True)
        device = torch.device(self.patcher.load_device)
        self.impl.to(device)  # weights are already there (ModelPatcher); drops text features of another device
        return device

    def _score_chunk(self, images: torch.Tensor, prompts: list[str], batch_size: int) -> dict[str, torch.Tensor]:
        # 8-bit RGB exactly as ComfyUI's SaveImage writes it, so a score equals the score of the saved PNG
        # (the published models were evaluated on image files through PIL)
        arrays = np.clip(255.0 * images[..., :3].float().cpu().numpy(), 0, 255).astype(np.uint8)
        out = self.impl.score(list(arrays), prompts if self.needs_prompt else None, batch_size=batch_size)
        return {k: v.float().cpu() for k, v in out.items()}

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str], batch_size: int = 8) -> dict[str, torch.Tensor]:
        """Scores of a ComfyUI IMAGE batch [B,H,W,C] with one prompt per image; shows a progress bar."""
        check_images(images)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{len(prompts)} prompts for {images.shape[0]} images")
        self.load()
        images = images[..., :3]
        batch_size = max(1, int(batch_size))
        starts = range(0, images.shape[0], batch_size)
        pbar = comfy.utils.ProgressBar(len(starts))
        parts: dict[str, list[torch.Tensor]] = {}
        for s in starts:
            mm.throw_exception_if_processing_interrupted()
            chunk = self._score_chunk(images[s : s + batch_size], prompts[s : s + batch_size], batch_size)
            for k, v in chunk.items():
                parts.setdefault(k, []).append(v.reshape(-1))
            pbar.update(1)
        return {k: torch.cat(v) for k, v in parts.items()}


def check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"IMAGE must be a [B,H,W,C] tensor, got {shape}")
    if images.shape[0] == 0:
        raise ValueError("IMAGE batch is empty (0 images)")
    if images.shape[-1] not in (3, 4):
        raise ValueError(f"IMAGE must have 3 (RGB) or 4 channels in the last dim, got shape {tuple(images.shape)}")


def split_prompts(prompt: str, n: int, per_line: bool, required: bool = True) -> list[str]:
    """One prompt for all ``n`` images, or (``per_line``) one non-empty line per image.

    With ``required=False`` (prompt-free metrics such as HP) an empty prompt gives ``[""] * n``."""
    if not prompt.strip():
        if required:
            raise ValueError("the prompt is empty (this metric compares the image with its prompt)")
        return [""] * n
    if not per_line:
        return [prompt] * n
    lines = [ln.strip() for ln in prompt.splitlines() if ln.strip()]
    if len(lines) == 1:
        return lines * n
    if len(lines) != n:
        raise ValueError(f"one prompt per line was asked: {len(lines)} non-empty lines for {n} images")
    return lines


_cache: LRUCache[RewardModel] = LRUCache(_CACHE_SIZE)


def _torch_dtype(dtype: str) -> torch.dtype:
    return parse_dtype(dtype)


def load_reward_model(
    model: str,
    ict_source: str,
    hp_source: str,
    baseline_source: str = "",
    device: str = "default",
    dtype: str = "fp32",
) -> RewardModel:
    """Load (or fetch from the in-process cache) a reward model wrapped in a ComfyUI ModelPatcher."""
    choices = MODEL_CHOICES + baselines()
    if model not in choices:
        raise ValueError(f"unknown reward model {model!r}; choose one of {choices}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {DTYPES}")
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {DEVICES}")
    sources: dict[str, str] = {}
    if model in ("ICT-HP", "ICT"):
        sources["ict"] = resolve_source(ict_source)
    if model in ("ICT-HP", "HP"):
        sources["hp"] = resolve_source(hp_source)
    if model not in MODEL_CHOICES and baseline_source.strip():
        sources["baseline"] = free_text_source(baseline_source)
    key = (model, tuple(sorted((k, v, source_fingerprint(v)) for k, v in sources.items())), device, dtype)
    return _cache.get_or_build(key, lambda: _build(model, sources, device, dtype))


def _build(model: str, sources: dict[str, str], device: str, dtype: str) -> RewardModel:
    load_device = torch.device("cpu") if device == "cpu" else mm.get_torch_device()
    offload_device = torch.device("cpu") if device == "cpu" else mm.unet_offload_device()
    if model not in MODEL_CHOICES:
        metrics = [model]
        core_sources = {model: sources["baseline"]} if "baseline" in sources else None
    else:
        metrics = {"ICT-HP": ["ict_hp", "ict", "hp"], "ICT": ["ict"], "HP": ["hp"]}[model]
        core_sources = sources
    impl = MultiScorer(list(reversed(metrics)), core_sources, device=offload_device, dtype=_torch_dtype(dtype))
    holder = _Holder(impl.models)
    holder.eval()
    patcher = comfy.model_patcher.ModelPatcher(holder, load_device=load_device, offload_device=offload_device)
    return RewardModel(name=model, metrics=metrics, impl=impl, patcher=patcher, sources=sources)


def clear_cache() -> None:
    _cache.clear()
