"""Best-of-N selection: rank a batch by score and re-index images, latents and masks consistently.

Pure tensor functions (no ComfyUI import). ComfyUI layouts: IMAGE [B,H,W,C], MASK [B,H,W] (or [H,W]),
LATENT ``{"samples": [B,C,...], "noise_mask"?: [B|1,...], "batch_index"?: list[int], ...}``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from icthp_core.errors import ConfigError

__all__ = [
    "NORMALIZATIONS",
    "Selection",
    "combine_scores",
    "competition_ranks",
    "parse_reference",
    "parse_weights",
    "rank",
    "ranking_order",
    "select",
    "select_batch",
    "select_latent",
    "select_mask",
]

#: how `combine_scores` puts metrics on one scale before weighting
NORMALIZATIONS = ("none", "batch", "reference")
#: what `select` does when no score reaches the threshold
ON_EMPTY = ("keep_best", "empty", "error")


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


def ranking_order(values: Sequence[float]) -> list[int]:
    """Indices best first: the one ranking rule of every front end (higher is better, equal scores keep their
    input order, NaN last)."""

    def key(i: int) -> tuple[int, float, int]:
        v = float(values[i])
        return (1, 0.0, i) if math.isnan(v) else (0, -v, i)

    return sorted(range(len(values)), key=key)


def competition_ranks(values: Sequence[float]) -> list[int | None]:
    """Rank numbers under the same rule: 1 = best, equal scores share the better rank ("1224"), NaN unranked (None).

    An item's rank is 1 + the number of scores strictly above it, so listing items in `ranking_order` gives
    non-decreasing ranks.
    """
    v = [float(x) for x in values]
    ranks: list[int | None] = [None] * len(v)
    above, prev = 0, None
    for pos, i in enumerate(ranking_order(v)):
        if math.isnan(v[i]):
            break
        if v[i] != prev:
            above, prev = pos, v[i]
        ranks[i] = above + 1
    return ranks


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
    order = ranking_order(values)
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


def _pairs(text: str, what: str) -> list[tuple[str, list[float]]]:
    out = []
    for part in [p.strip() for p in text.replace("\n", ",").split(",") if p.strip()]:
        name, *nums = [x.strip() for x in part.split(":")]
        try:
            values = [float(x) for x in nums]
        except ValueError:
            raise ConfigError(f"{what}: {part!r} is not 'metric:number'") from None
        out.append((name, values))
    return out


def parse_weights(text: str) -> dict[str, float]:
    """``"ict_hp:1.0, imagereward:0.5"`` → ``{"ict_hp": 1.0, "imagereward": 0.5}`` (a bare name weighs 1).

    A ``nan`` or infinite weight is refused (it would make every combined score NaN or infinite)."""
    weights: dict[str, float] = {}
    for name, values in _pairs(text, "weights"):
        if len(values) > 1:
            raise ConfigError(f"weights: {name!r} has {len(values)} numbers; write 'metric:weight'")
        weights[name] = values[0] if values else 1.0
        if not math.isfinite(weights[name]):
            raise ConfigError(f"weights: {name!r} has weight {weights[name]}; a weight must be a finite number")
    if not weights:
        raise ConfigError("weights: empty; write e.g. 'ict_hp:1.0, imagereward:0.5'")
    return weights


def parse_reference(text: str) -> dict[str, tuple[float, float]]:
    """``"ict_hp:0.70:0.05, imagereward:0:1"`` → ``{metric: (mean, std)}`` (reference statistics for z-scores)."""
    ref: dict[str, tuple[float, float]] = {}
    for name, values in _pairs(text, "reference statistics"):
        if len(values) != 2 or not all(math.isfinite(v) for v in values) or values[1] <= 0:
            raise ConfigError(f"reference statistics: {name!r} needs 'metric:mean:std', finite, with std > 0")
        ref[name] = (values[0], values[1])
    return ref


def combine_scores(
    scores: dict[str, torch.Tensor],
    weights: dict[str, float],
    normalize: str = "batch",
    reference: dict[str, tuple[float, float]] | None = None,
) -> torch.Tensor:
    """Weighted sum of metrics, each first put on one scale.

    ``normalize``: ``"none"`` (raw values), ``"batch"`` (z-score within this batch; a constant metric
    contributes 0, so a batch of one scores 0), ``"reference"`` ((x - mean) / std with the user's
    ``reference`` statistics: absolute, comparable across batches).

    A NaN or infinite score (a failed image) is left out of the batch mean and standard deviation and makes that
    image's combined score NaN, which `rank` and `select` put last; the other images are compared as if it were
    absent. Weights must be finite (``ValueError`` otherwise).
    """
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    missing = [m for m in weights if m not in scores]
    if missing:
        raise ConfigError(f"weights name metrics {missing} that are not scored (scored: {sorted(scores)})")
    bad = {m: w for m, w in weights.items() if not math.isfinite(w)}
    if bad:
        raise ConfigError(f"weights {bad}: a weight must be a finite number")
    total = None
    for m, w in weights.items():
        x = torch.as_tensor(scores[m], dtype=torch.float64).reshape(-1)
        x = torch.where(torch.isfinite(x), x, torch.full_like(x, math.nan))
        if normalize == "batch":
            x = _batch_z(x)
        elif normalize == "reference":
            if not reference or m not in reference:
                raise ConfigError(f"normalize='reference' needs reference statistics (mean:std) for {m!r}")
            mean, std = reference[m]
            x = (x - mean) / std
        total = w * x if total is None else total + w * x
    return total.float()


def _batch_z(x: torch.Tensor) -> torch.Tensor:
    """z-score over the finite entries (NaN entries stay NaN); a constant metric (or a single finite value) gives 0."""
    ok = ~torch.isnan(x)
    vals = x[ok]
    std = vals.std(unbiased=False) if vals.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)
    z = (x - vals.mean()) / std if float(std) > 0 else torch.zeros_like(x)
    return torch.where(ok, z, x)


def select(
    scores: torch.Tensor | Sequence[float],
    k: int,
    threshold: float | None = None,
    on_empty: str = "keep_best",
) -> Selection:
    """Top ``k`` among the scores ``>= threshold`` (``None``: no threshold).

    When nothing passes: ``on_empty="keep_best"`` keeps the single best item anyway, ``"empty"`` selects nothing
    (every item rejected), ``"error"`` raises ``ValueError`` naming the best score and the threshold.
    """
    if on_empty not in ON_EMPTY:
        raise ConfigError(f"on_empty must be one of {ON_EMPTY}, got {on_empty!r}")
    ranked = rank(scores, k if threshold is None else len(scores))
    if threshold is None:
        return ranked
    order = ranked.selected + ranked.rejected
    passed = [i for i in order if not math.isnan(ranked.scores[i]) and ranked.scores[i] >= threshold][:k]
    if not passed:
        if on_empty == "error":
            best = ranked.scores[order[0]]
            raise ValueError(f"no score reached the threshold {threshold} (best {best:.4f})")
        passed = order[:1] if on_empty == "keep_best" else []
    return Selection(selected=passed, rejected=[i for i in order if i not in passed], scores=ranked.scores)
