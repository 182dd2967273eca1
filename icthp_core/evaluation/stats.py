"""Pairwise comparison statistics: win rate of A over B with a confidence interval.

Ties count as half a win. The Wilson score interval is used by default (it accepts the fractional
success count that half-ties produce); a percentile bootstrap over pairs is available as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

__all__ = ["WinRate", "wilson_interval", "bootstrap_interval", "win_rate"]


@dataclass(frozen=True)
class WinRate:
    """Outcome counts of A vs B and the win rate of A (ties = ½) with its confidence interval."""

    n: int
    wins: int
    ties: int
    losses: int
    rate: float
    low: float
    high: float
    method: str
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion; `successes` may be fractional (ties counted as ½).

    Returns (nan, nan) when n == 0.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes!r}, n={n!r}")
    if n == 0:
        return (math.nan, math.nan)
    z = _z(confidence)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2.0) / (1.0 + z2n)
    half = z / (1.0 + z2n) * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def bootstrap_interval(
    outcomes: Sequence[float], confidence: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-pair outcomes (1 win, ½ tie, 0 loss)."""
    x = np.asarray(outcomes, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"outcomes must be 1-D, got shape {x.shape}")
    if x.size == 0:
        return (math.nan, math.nan)
    _z(confidence)  # validates the level
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def win_rate(
    a: Sequence[float],
    b: Sequence[float],
    *,
    method: str = "wilson",
    confidence: float = 0.95,
    tie_tol: float = 0.0,
    n_boot: int = 2000,
    seed: int = 0,
) -> WinRate:
    """Win rate of A over B on paired scores (higher is better); NaN pairs are dropped.

    A pair is a tie when |a - b| <= tie_tol. `method` is "wilson" or "bootstrap".
    """
    xa = np.asarray(a, dtype=np.float64).reshape(-1)
    xb = np.asarray(b, dtype=np.float64).reshape(-1)
    if xa.shape != xb.shape:
        raise ValueError(f"a and b must have the same length, got {xa.size} and {xb.size}")
    if method not in ("wilson", "bootstrap"):
        raise ValueError(f"method must be 'wilson' or 'bootstrap', got {method!r}")
    keep = ~(np.isnan(xa) | np.isnan(xb))
    diff = xa[keep] - xb[keep]
    tie = np.abs(diff) <= tie_tol
    wins = int(np.sum((diff > 0) & ~tie))
    losses = int(np.sum((diff < 0) & ~tie))
    ties = int(np.sum(tie))
    n = wins + losses + ties
    successes = wins + 0.5 * ties
    rate = successes / n if n else math.nan
    if method == "wilson":
        low, high = wilson_interval(successes, n, confidence)
    else:
        outcomes = np.where(tie, 0.5, (diff > 0).astype(np.float64))
        low, high = bootstrap_interval(outcomes, confidence, n_boot, seed)
    return WinRate(n, wins, ties, losses, rate, low, high, method, confidence)
