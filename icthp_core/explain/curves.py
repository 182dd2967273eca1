"""Deletion and insertion curves (Petsiuk et al. 2018): how fast the score falls when the most relevant cells are
removed first, and rises when they are restored first into a blank image, against random orders."""

from __future__ import annotations

import torch

from icthp_core.explain.common import metric_fn
from icthp_core.explain.regions import batched_scores, cell_masks, fill_value, masked


def auc(curve: torch.Tensor) -> float:
    """Area under a curve sampled at equally spaced fractions 0..1 (trapezoid rule)."""
    return float(torch.trapezoid(curve, dx=1.0 / (len(curve) - 1)))


def _step_masks(h: int, w: int, grid: int, order: list[int], steps: int) -> torch.Tensor:
    """Masks [steps+1,H,W]: mask k covers the first round(k / steps * cells) cells of `order`."""
    counts = torch.linspace(0, len(order), steps + 1).round().long().tolist()
    return cell_masks(h, w, grid, [order[:c] for c in counts])


def curves(
    scorer, metric: str, image: torch.Tensor, prompt: str | None, order: list[int], grid: int, steps: int, bs: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """(deletion, insertion) score curves [steps+1] for removing / restoring cells in `order` (most relevant first)."""
    f = metric_fn(scorer, metric, prompt)
    h, w = image.shape[-2:]
    fill = fill_value(image)
    m = _step_masks(h, w, grid, order, steps)
    deletion = masked(image, m, fill)
    insertion = masked(image, ~m, fill)
    scores = batched_scores(f, torch.cat([deletion, insertion]), bs)
    return scores[: steps + 1], scores[steps + 1 :]


def evaluate(
    scorer,
    metric: str,
    image: torch.Tensor,
    prompt: str | None,
    heat_grid: torch.Tensor,
    steps: int = 16,
    n_random: int = 3,
    seed: int = 0,
) -> dict:
    """Deletion / insertion AUCs of a heatmap (on its grid) and the mean over `n_random` random orders.

    A faithful map has deletion AUC below random's and insertion AUC above; `beats_random_deletion` says which.
    """
    grid = heat_grid.shape[0]
    order = torch.argsort(heat_grid.flatten(), descending=True, stable=True).tolist()
    d, i = curves(scorer, metric, image, prompt, order, grid, steps)
    gen = torch.Generator().manual_seed(seed)
    rd, ri = [], []
    for _ in range(n_random):
        perm = torch.randperm(grid * grid, generator=gen).tolist()
        cd, ci = curves(scorer, metric, image, prompt, perm, grid, steps)
        rd.append(auc(cd))
        ri.append(auc(ci))
    out = {
        "deletion_auc": auc(d),
        "insertion_auc": auc(i),
        "random_deletion_auc": sum(rd) / n_random,
        "random_insertion_auc": sum(ri) / n_random,
        "deletion_curve": d.tolist(),
        "insertion_curve": i.tolist(),
        "grid": grid,
        "steps": steps,
    }
    out["beats_random_deletion"] = out["deletion_auc"] < out["random_deletion_auc"]
    out["beats_random_insertion"] = out["insertion_auc"] > out["random_insertion_auc"]
    return out
