"""icthp_core.evaluation.stats: Wilson interval checked by inverting the score test numerically (independent
of the closed form), bootstrap coverage, and win counting with ties as ½."""

import math

import numpy as np
import pytest

from icthp_core.evaluation.stats import bootstrap_interval, wilson_interval, win_rate


def _score_test_bounds(s: float, n: int, z: float) -> tuple[float, float]:
    """Endpoints of {p : |s - n p| <= z sqrt(n p (1-p))} found by bisection."""

    def inside(p: float) -> bool:
        return abs(s - n * p) <= z * math.sqrt(n * p * (1 - p))

    phat = s / n

    def edge(lo_out: float, hi_in: float) -> float:
        for _ in range(200):
            mid = (lo_out + hi_in) / 2
            if inside(mid):
                hi_in = mid
            else:
                lo_out = mid
        return (lo_out + hi_in) / 2

    low = 0.0 if inside(0.0) or phat == 0 else edge(0.0, phat)
    high = 1.0 if inside(1.0) or phat == 1 else edge(1.0, phat)
    return low, high


@pytest.mark.parametrize("s,n", [(8, 10), (0.5, 3), (17.5, 40), (0, 5), (5, 5), (123, 200)])
def test_wilson_matches_inverted_score_test(s, n):
    z = 1.959963984540054
    lo, hi = wilson_interval(s, n, 0.95)
    rlo, rhi = _score_test_bounds(s, n, z)
    assert lo == pytest.approx(rlo, abs=1e-9)
    assert hi == pytest.approx(rhi, abs=1e-9)


def test_wilson_textbook_value_and_errors():
    # 8/10 at 95%: (0.4902, 0.9433), a standard worked example.
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=1.5)


def test_win_rate_counts_ties_as_half_and_drops_nan():
    a = [1.0, 2.0, 3.0, 0.5, float("nan"), 4.0]
    b = [0.0, 2.0, 4.0, 0.1, 1.0, 4.0]
    w = win_rate(a, b)
    assert (w.n, w.wins, w.ties, w.losses) == (5, 2, 2, 1)
    assert w.rate == pytest.approx(3 / 5)
    assert (w.low, w.high) == pytest.approx(wilson_interval(3.0, 5))
    t = win_rate([1.0, 1.05], [1.0, 1.0], tie_tol=0.1)
    assert t.ties == 2 and t.rate == 0.5
    with pytest.raises(ValueError, match="same length"):
        win_rate([1, 2], [1])
    with pytest.raises(ValueError, match="method"):
        win_rate([1], [1], method="exact")


def test_bootstrap_interval_contains_rate_and_is_seeded():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.2, 1, 300), rng.normal(0, 1, 300)
    w = win_rate(a, b, method="bootstrap", n_boot=1000, seed=7)
    assert w.low < w.rate < w.high
    wl = win_rate(a, b)
    assert abs(w.low - wl.low) < 0.03 and abs(w.high - wl.high) < 0.03  # both ≈ normal approx at n=300
    assert bootstrap_interval([1, 0, 0.5], seed=1) == bootstrap_interval([1, 0, 0.5], seed=1)
    assert all(math.isnan(x) for x in bootstrap_interval([]))
