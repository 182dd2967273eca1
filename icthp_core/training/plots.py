"""One plot helper for every training job: panels of curves drawn from ``metrics.jsonl``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from icthp_core.training.metrics_log import read_metrics

__all__ = ["REWARD_TRAINING_PANELS", "plot_metrics"]

_NOT_CURVES = ("train/lr", "train/steps_per_s", "train/sec", "train/max_mem_gib")

#: (title, y label, which series) of the reward-model stages: training losses and validation accuracies
REWARD_TRAINING_PANELS: list[tuple[str, str, Callable[[str], bool]]] = [
    ("training loss", "loss", lambda k: k.startswith("train/") and k not in _NOT_CURVES and "acc" not in k),
    ("validation", "pairwise accuracy", lambda k: k.startswith("val/")),
]


def plot_metrics(
    metrics_file: str | os.PathLike,
    out_png: str | os.PathLike,
    title: str = "",
    panels: list[tuple[str, str, Callable[[str], bool]]] | None = None,
) -> Path:
    """One subplot per panel that has data; validation-like series (few points) get markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(metrics_file)
    panels = panels or REWARD_TRAINING_PANELS
    used = [(t, y, [k for k in series if pick(k)]) for t, y, pick in panels]
    used = [p for p in used if p[2]] or [(t, y, []) for t, y, _ in panels[:1]]
    fig, axes = plt.subplots(1, len(used), figsize=(5.5 * len(used), 4), squeeze=False)
    for ax, (ptitle, ylabel, keys) in zip(axes[0], used, strict=True):
        for k in keys:
            pts = series[k]
            ax.plot(*zip(*pts, strict=True), marker="o" if len(pts) <= 30 else None, ms=3, label=k)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.set_title(ptitle)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
