"""Matplotlib charts for the app (object-oriented API, no pyplot state, so nothing leaks between requests)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .logic import label
from .ranking import winners

WIN = "#f5a700"
BAR = "#5b7fbf"


def scores_figure(names: Sequence[str], scores: Mapping[str, Sequence[float]]) -> Figure:
    """One panel per metric (its own scale), a bar per image; each metric's winner in gold."""
    metrics = list(scores)
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(4.2 * cols, 0.35 * len(names) * rows + 1.2 * rows + 0.3), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    y = np.arange(len(names))
    for ax, m in zip(axes, metrics, strict=False):
        v = np.asarray(scores[m], dtype=float)
        top = set(winners(v))
        finite = v[np.isfinite(v)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        pad = (hi - lo) * 0.15 or abs(hi) * 0.05 or 0.05
        base = lo - pad  # bars start at the left edge: zoomed on the spread, also for negative scores
        ax.barh(y, np.nan_to_num(v - base), left=base, color=[WIN if i in top else BAR for i in range(len(v))])
        ax.set_yticks(y, [n if len(n) <= 18 else n[:16] + "…" for n in names], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(label(m), fontsize=10)
        ax.set_xlim(base, hi + pad)
        ax.tick_params(axis="x", labelsize=8)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    return fig


def win_rate_figure(table: pd.DataFrame, a_name: str = "A", b_name: str = "B") -> Figure:
    """Win rate of A over B per metric with its confidence interval; 0.5 = no preference."""
    fig = Figure(figsize=(6.5, 0.5 * len(table) + 1.3), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(table))
    rate = table["A win rate"].to_numpy(float)
    err = np.vstack([rate - table["CI low"].to_numpy(float), table["CI high"].to_numpy(float) - rate])
    ax.barh(y, rate, xerr=err, color=[WIN if r > 0.5 else BAR for r in rate], capsize=4)
    ax.axvline(0.5, color="#444", lw=1, ls="--")
    ax.set_yticks(y, table["metric"].tolist())
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"win rate of {a_name} over {b_name} (ties = ½), with CI")
    return fig
