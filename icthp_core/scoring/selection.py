"""Best-of-N selection: rank a batch by score and re-index images, latents and masks consistently.

Pure tensor functions (no ComfyUI import). ComfyUI layouts: IMAGE [B,H,W,C], MASK [B,H,W] (or [H,W]),
LATENT ``{"samples": [B,C,...], "noise_mask"?: [B|1,...], "batch_index"?: list[int], ...}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Selection", "rank", "select_batch", "select_latent", "select_mask"]


@dataclass(frozen=True)
class Selection:
    """Indices into the input batch: ``selected`` (best first) and ``rejected`` (also best first)."""

    selected: list[int]
    rejected: list[int]
    scores: list[float]

    @property
    def selected_scores(self) -> list[float]:
        return [self.scores[i] for i in self.selected]

    @property
    def rejected_scores(self) -> list[float]:
        return [self.scores[i] for i in self.rejected]


def rank(scores: torch.Tensor | Sequence[float], k: int) -> Selection:
    """Rank ``scores`` (higher is better) and keep the top ``k``.

    ``k`` larger than the batch is clamped to the batch size; ``k < 1`` raises ``ValueError``.
    Ties keep input order (stable); NaN scores rank last.
    """
    if isinstance(scores, torch.Tensor):
        if scores.ndim != 1:
            raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
        values = [float(v) for v in scores.detach().float().cpu().tolist()]
    else:
        values = [float(v) for v in scores]
    if not values:
        raise ValueError("cannot select from an empty batch (0 scores)")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, len(values))

    def key(i: int) -> tuple[int, float, int]:
        v = values[i]
        return (1, 0.0, i) if math.isnan(v) else (0, -v, i)

    order = sorted(range(len(values)), key=key)
    return Selection(selected=order[:k], rejected=order[k:], scores=values)


def _index(x: torch.Tensor, idx: Sequence[int]) -> torch.Tensor:
    return x.index_select(0, torch.as_tensor(list(idx), dtype=torch.long, device=x.device))


def select_batch(x: torch.Tensor, idx: Sequence[int], name: str = "IMAGE") -> torch.Tensor:
    """Rows ``idx`` of a batch-first tensor (an empty ``idx`` gives a batch of 0)."""
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension, got a scalar")
    bad = [i for i in idx if not 0 <= i < x.shape[0]]
    if bad:
        raise IndexError(f"{name}: indices {bad} out of range for a batch of {x.shape[0]}")
    return _index(x, idx)


def select_mask(mask: torch.Tensor, idx: Sequence[int], batch_size: int, name: str = "MASK") -> torch.Tensor:
    """Re-index a mask: per-sample masks (first dim == ``batch_size``) are indexed, a single mask
    (``[H,W]`` or first dim 1, broadcast by ComfyUI) is kept as is."""
    if mask.ndim >= 3 and mask.shape[0] == batch_size:
        return select_batch(mask, idx, name)
    if mask.ndim == 2 or mask.shape[0] == 1:
        return mask
    raise ValueError(
        f"{name} has batch {mask.shape[0]} (shape {tuple(mask.shape)}); expected "
        f"{batch_size} (one per image) or 1 (shared)"
    )


def select_latent(latent: dict, idx: Sequence[int]) -> dict:
    """Re-index a LATENT dict: ``samples``, ``noise_mask`` and ``batch_index`` move together.

    ``batch_index`` (the per-sample noise index ComfyUI samplers use) is created as ``range(B)`` when
    absent, so a selected latent keeps the noise of its original position. Other keys are copied.
    """
    if "samples" not in latent:
        raise ValueError(f"LATENT has no 'samples' (keys: {sorted(latent)})")
    samples = latent["samples"]
    batch = samples.shape[0]
    out = dict(latent)
    out["samples"] = select_batch(samples, idx, "LATENT samples")
    if latent.get("noise_mask") is not None:
        out["noise_mask"] = select_mask(latent["noise_mask"], idx, batch, "LATENT noise_mask")
    base = list(latent.get("batch_index") or range(batch))
    if len(base) != batch:
        raise ValueError(f"LATENT batch_index has {len(base)} entries for {batch} samples")
    out["batch_index"] = [base[i] for i in idx]
    return out
