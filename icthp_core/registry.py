"""One registry of reward models: ICT, HP, ICT-HP and the baselines, each loading its own published weights."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .config import VIT_H_14, VIT_L_14_OPENAI
from .hub import resolve_file
from .loading import CLIP_WEIGHT_NAMES, load_clip, parse_device, parse_dtype
from .models import HPModel, ICTModel, ImageHeadModel, TextImageModel, load_head


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: which backbone model computes it, its default source and what its values mean."""

    name: str
    model: str  # key of the model that computes it (metrics sharing a model share one instance)
    default_source: str
    description: str
    higher_is_better: bool = True


METRICS: dict[str, MetricSpec] = {}
_LOADERS: dict[str, Callable[..., nn.Module]] = {}
#: metrics computed from other metrics: name -> (inputs, function)
DERIVED: dict[str, tuple[tuple[str, ...], Callable[..., torch.Tensor]]] = {}


def register(spec: MetricSpec, loader: Callable[..., nn.Module] | None = None) -> None:
    """Add a metric; `loader(source, device, dtype)` builds its model (omit it to reuse another metric's model)."""
    METRICS[spec.name] = spec
    if loader is not None:
        _LOADERS[spec.model] = loader


def list_metrics() -> list[str]:
    """Names of every registered metric (base and derived)."""
    return list(METRICS) + [d for d in DERIVED if d not in METRICS]


def _clip_metric(mode: str = "crop", logit_scaled: bool = False, filenames=CLIP_WEIGHT_NAMES, nested_key=None):
    def load(source, device, dtype):
        clip = load_clip(source, device=device, dtype=dtype, filenames=filenames, nested_key=nested_key,
                         default_config=VIT_H_14)
        return TextImageModel(clip, preprocess_mode=mode, logit_scaled=logit_scaled)
    return load


AESTHETIC_HEAD_NAMES = ("sac+logos+ava1-l14-linearMSE.pth", "aesthetic_head.safetensors")
AESTHETIC_BACKBONE = "openai/clip-vit-large-patch14"


def _load_aesthetic(source, device, dtype) -> ImageHeadModel:
    """LAION aesthetic predictor v2: head(L2-normalised OpenAI CLIP ViT-L/14 image features), about 1..10.

    `source`: a head file, or a directory with the head file (and optionally a ViT-L/14 CLIP checkpoint,
    else `openai/clip-vit-large-patch14` is used), or a hub repo holding the head file.
    """
    backbone_src: str | os.PathLike = AESTHETIC_BACKBONE
    if os.path.isdir(source) and resolve_file(source, CLIP_WEIGHT_NAMES, required=False):
        backbone_src = source
    visual = load_clip(backbone_src, vision_only=True, device=device, dtype=dtype, default_config=VIT_L_14_OPENAI)
    head = load_head(source, AESTHETIC_HEAD_NAMES).to(device=device, dtype=dtype).eval().requires_grad_(False)
    return ImageHeadModel(visual, head, normalize=True, sigmoid=False)


register(MetricSpec("ict", "ict", "8y/ICT", "ICT: how much of the prompt the image contains (cosine, ~0..1)"),
         lambda src, device, dtype: ICTModel.from_pretrained(src, device=device, dtype=dtype))
register(MetricSpec("hp", "hp", "8y/HP", "HP: prompt-free high-preference score (sigmoid, 0..1)"),
         lambda src, device, dtype: HPModel.from_pretrained(src, device=device, dtype=dtype))
DERIVED["ict_hp"] = (("ict", "hp"), lambda ict, hp: ict * hp)
register(MetricSpec("clip", "clip", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                    "CLIP score: LAION CLIP-H cosine (~0.2..0.4)"), _clip_metric())
register(MetricSpec("pickscore", "pickscore", "yuvalkirstain/PickScore_v1",
                    "PickScore v1: logit_scale.exp() x cosine (~18..24)"), _clip_metric(logit_scaled=True))
register(MetricSpec("hpsv2", "hpsv2", "xswu/HPSv2", "HPSv2: cosine of the HPS CLIP-H, letterboxed input (~0.2..0.3)"),
         _clip_metric("letterbox", filenames=("HPS_v2_compressed.pt",), nested_key="state_dict"))
register(MetricSpec("hpsv2.1", "hpsv2.1", "xswu/HPSv2", "HPSv2.1: as HPSv2 with the v2.1 weights (~0.2..0.35)"),
         _clip_metric("letterbox", filenames=("HPS_v2.1_compressed.pt",), nested_key="state_dict"))
register(MetricSpec("aesthetic", "aesthetic", "camenduru/improved-aesthetic-predictor",
                    "LAION aesthetic predictor v2 (CLIP ViT-L/14 + MLP, ~1..10)"), _load_aesthetic)


def model_key(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not registered; choose from {list_metrics()}")
    return METRICS[metric].model


def create_reward_model(metric: str, source: str | os.PathLike | None = None, device=None, dtype="fp32") -> nn.Module:
    """Load the model that computes `metric` (a base metric), from `source` or the metric's default hub id."""
    key = model_key(metric)
    src = source if source is not None else METRICS[metric].default_source
    return _LOADERS[key](src, parse_device(device), parse_dtype(dtype))


def required_base_metrics(metrics: list[str]) -> list[str]:
    """Base metrics needed to compute `metrics` (derived ones expanded), in a stable order."""
    out: list[str] = []
    for m in metrics:
        parts = DERIVED[m][0] if m in DERIVED else (m,)
        for p in parts:
            model_key(p)
            if p not in out:
                out.append(p)
    return out
