"""Shared pieces of the explanations: the error type, the scored image as a tensor, and one metric as a function."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from icthp_core.data.images import to_pil
from icthp_core.data.preprocess import preprocess_tensor
from icthp_core.explain.methods import ExplainError
from icthp_core.scoring.registry import DERIVED, METRICS

#: largest side of the working copy of an image that region methods perturb (the heatmap is upsampled back)
WORK_SIZE = 448


def base_metrics(metric: str) -> tuple[str, ...]:
    """The base metrics a metric is computed from (itself when it has a model)."""
    return DERIVED[metric][0] if metric in DERIVED else (metric,)


def check_metric(scorer, metric: str) -> None:
    """A one-line error unless `scorer` computes `metric`."""
    if metric not in scorer.metrics:
        raise ExplainError(f"metric {metric!r}: this scorer computes {', '.join(scorer.metrics)}")


def text_metrics(metric: str) -> list[str]:
    """The prompt-conditioned base metrics behind `metric` (empty for image-only metrics such as HP)."""
    return [m for m in base_metrics(metric) if METRICS[m].needs_prompt]


def image_tensor(image, work_size: int | None = WORK_SIZE) -> torch.Tensor:
    """An image (path, PIL, numpy HWC, or float tensor [3,H,W]/[1,3,H,W] in 0..1) as float [1,3,H,W] in 0..1,
    downscaled (area-preserving, aspect kept) so its largest side is at most `work_size`."""
    if isinstance(image, torch.Tensor):
        x = image.detach().float()
        x = x.unsqueeze(0) if x.dim() == 3 else x
        if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3, 4):
            x = x[..., :3].permute(0, 3, 1, 2)
        if x.dim() != 4 or x.shape[0] != 1:
            raise ExplainError(f"image: expected one image [3,H,W] or [1,3,H,W], got shape {tuple(image.shape)}")
    else:
        pil: Image.Image = to_pil(image)
        x = torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    h, w = x.shape[-2:]
    if work_size and max(h, w) > work_size:
        s = work_size / max(h, w)
        x = torch.nn.functional.interpolate(
            x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear", antialias=True
        )
    return x.clamp(0, 1)


def metric_fn(scorer, metric: str, prompt: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """`f(images [B,3,H,W] in 0..1) -> scores [B]` of one metric, through the differentiable preprocessing.

    Runs under the caller's grad mode (region methods call it under `torch.no_grad()`, relevance with grad).
    """
    check_metric(scorer, metric)

    def f(images: torch.Tensor) -> torch.Tensor:
        prompts = [prompt] * images.shape[0] if text_metrics(metric) else None
        return scorer.reward(images, prompts, metric=metric).float()

    return f


def preprocess_for(model, images: torch.Tensor, scorer) -> torch.Tensor:
    """Normalised model input of `images` (0..1) for `model`'s preprocessing mode, on the scorer's device/dtype."""
    mode = getattr(model, "preprocess_mode", "crop")
    return preprocess_tensor(images.to(scorer.device), mode).to(scorer.dtype)


def with_grad(fn):
    """Run `fn` with autograd on, even inside `torch.inference_mode()` (ComfyUI runs nodes in it); tensor arguments
    made in inference mode must be cloned inside `fn` before they enter the graph."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)

    return wrapper


def ensure_autograd_weights(module: torch.nn.Module) -> int:
    """Replace parameters and buffers that are inference tensors (made or moved under `torch.inference_mode()`, as
    a ComfyUI loader or device move may do) by normal copies, so gradients can flow through `module`.
    Returns how many were replaced (0 in the usual case: nothing is copied)."""
    n = 0
    with torch.inference_mode(False):
        for mod in module.modules():
            for table in (mod._parameters, mod._buffers):
                for name, t in list(table.items()):
                    if t is not None and t.is_inference():
                        c = t.clone()
                        table[name] = (
                            torch.nn.Parameter(c, requires_grad=t.requires_grad) if name in mod._parameters else c
                        )
                        n += 1
    return n
