"""Preference-accuracy metrics.

- Table 1 of the paper: on triplets (I1 < I2 < I3), the fraction of triplets where a metric ranks the pair
  correctly, for I2>I1, I3>I2, I3>I1, and the average of the three. Equal scores count 0.5 (a coin flip).
- PickScore's tie-aware protocol on pairs with label_0 in {0, 0.5, 1}: the label is a tie if label_0 == 0.5;
  the prediction is a tie if |p1 - p0| <= t. Credit 1 if prediction and label agree (same winner, or both
  ties), 0.5 if exactly one of them is a tie, else 0. t is chosen on a validation split
  (:func:`choose_tie_threshold`, grid 0, 0.1, ..., 1 by default, as PickScore did for its logit-scaled
  scores).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from icthp_core.evaluation.keys import TRIPLET_KEYS

__all__ = [
    "TRIPLET_KEYS",
    "pairwise_accuracy",
    "triplet_accuracy",
    "tie_aware_credit",
    "tie_aware_accuracy",
    "choose_tie_threshold",
    "DEFAULT_TIE_GRID",
    "relative_tie_grid",
]

DEFAULT_TIE_GRID = tuple(round(0.1 * i, 1) for i in range(11))


def _np(x: torch.Tensor | Sequence[float] | np.ndarray) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def pairwise_accuracy(better: Sequence[float], worse: Sequence[float], tie_credit: float = 0.5) -> float:
    """Mean over pairs of 1[better > worse] + tie_credit * 1[better == worse]."""
    b, w = _np(better), _np(worse)
    if b.shape != w.shape:
        raise ValueError(f"pairwise_accuracy: shapes differ {b.shape} vs {w.shape}")
    if b.size == 0:
        return float("nan")
    return float(np.mean((b > w) + tie_credit * (b == w)))


def triplet_accuracy(
    s1: Sequence[float], s2: Sequence[float], s3: Sequence[float], tie_credit: float = 0.0
) -> dict[str, float]:
    """Table-1 accuracies for scores of I1 (loser), I2 (winner), I3 (refined) -> keys of TRIPLET_KEYS.

    An equal pair counts `tie_credit`: 0 as the paper's Table 1 (docs/evaluation.md, "The tie rule of Table 1").
    """
    out = {
        "I2>I1": pairwise_accuracy(s2, s1, tie_credit),
        "I3>I2": pairwise_accuracy(s3, s2, tie_credit),
        "I3>I1": pairwise_accuracy(s3, s1, tie_credit),
    }
    out["avg"] = float(np.mean([out["I2>I1"], out["I3>I2"], out["I3>I1"]]))
    return out


def tie_aware_credit(
    p0: Sequence[float], p1: Sequence[float], label_0: Sequence[float], threshold: float
) -> np.ndarray:
    """Per-pair credit (1, 0.5 or 0) of PickScore's protocol."""
    a, b, lab = _np(p0), _np(p1), _np(label_0)
    if not (a.shape == b.shape == lab.shape):
        raise ValueError(f"tie_aware_credit: shapes differ {a.shape}, {b.shape}, {lab.shape}")
    label_tie = lab == 0.5
    label_win0 = lab > 0.5
    pred_tie = np.abs(b - a) <= threshold
    pred_win0 = a > b
    agree = (label_tie & pred_tie) | (~label_tie & ~pred_tie & (label_win0 == pred_win0))
    half = label_tie ^ pred_tie
    return np.where(agree, 1.0, np.where(half, 0.5, 0.0))


def tie_aware_accuracy(p0: Sequence[float], p1: Sequence[float], label_0: Sequence[float], threshold: float) -> float:
    credit = tie_aware_credit(p0, p1, label_0, threshold)
    return float(credit.mean()) if credit.size else float("nan")


def choose_tie_threshold(
    p0: Sequence[float],
    p1: Sequence[float],
    label_0: Sequence[float],
    grid: Sequence[float] = DEFAULT_TIE_GRID,
) -> tuple[float, float]:
    """Threshold of `grid` with the best validation accuracy (smallest on equal accuracy) -> (t, accuracy)."""
    if len(grid) == 0:
        raise ValueError("choose_tie_threshold: empty grid")
    if len(_np(label_0)) == 0:
        raise ValueError("choose_tie_threshold: no scored pair to choose a threshold on")
    best_t, best_acc = None, -1.0
    for t in sorted(float(g) for g in grid):
        acc = tie_aware_accuracy(p0, p1, label_0, t)
        if acc > best_acc + 1e-12:
            best_t, best_acc = t, acc
    return float(best_t), float(best_acc)


def relative_tie_grid(p0: Sequence[float], p1: Sequence[float], n: int = 11) -> list[float]:
    """A grid on the metric's own scale: quantiles 0..50% of |p1 - p0| (for scores in [0, 1] like ICT/HP)."""
    d = np.abs(_np(p1) - _np(p0))
    if d.size == 0:
        return [0.0]
    return [0.0] + [float(q) for q in np.quantile(d, np.linspace(0.05, 0.5, n - 1))]
