"""Tables, win rates, grids and a plot from the per-image scores of `icthp evalgen` (paper Table 2 layout).

Means are over images; their confidence interval treats prompts as the independent unit: the per-prompt means
(over seeds) give the standard error, mean ± z·sd/√(prompts) (normal approximation). Win rates compare each LoRA
image with its base twin (same prompt, same seed/noise), ties count ½, with the Wilson interval of
`icthp_core.evaluation.stats.win_rate`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist

import numpy as np

from icthp_core.errors import DataError
from icthp_core.evaluation.stats import win_rate

__all__ = ["JPEG", "metric_title", "read_score_rows", "summarize", "paired_win_rates", "write_report"]

JPEG = "jpeg_kb"
KEY = ("model", "index", "n")


def metric_title(metric: str) -> str:
    if metric == JPEG:
        return "JPEG (kB)"
    from icthp_core.scoring.registry import METRICS

    return METRICS[metric].label if metric in METRICS else metric


def read_score_rows(scores_dir: str | Path) -> list[dict]:
    """Rows of every `part-*.jsonl` in `scores_dir`, one per (model, index, n) (the last written wins).

    A line cut short by a killed process is skipped (its image is scored again on the next run)."""
    rows: dict[tuple, dict] = {}
    for f in sorted(Path(scores_dir).glob("part-*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(r, dict) and all(k in r for k in KEY):
                rows[tuple(r[k] for k in KEY)] = r
    return list(rows.values())


def summarize(df, metrics: Sequence[str], models: Sequence[str], confidence: float = 0.95):
    """Per model and metric: images, prompts, mean, std over images, and the CI of the mean (prompts as units)."""
    import pandas as pd

    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    out = []
    for model in models:
        sub = df[df["model"] == model]
        for m in metrics:
            vals = sub[m].astype(float).dropna() if m in sub else sub.iloc[0:0]
            per_prompt = sub.assign(_v=sub[m].astype(float)).groupby("index")["_v"].mean().dropna()
            k = len(per_prompt)
            mean = float(vals.mean()) if len(vals) else math.nan
            half = z * float(per_prompt.std(ddof=1)) / math.sqrt(k) if k > 1 else math.nan
            out.append(
                {
                    "model": model,
                    "metric": m,
                    "images": int(len(vals)),
                    "prompts": k,
                    "mean": mean,
                    "std": float(vals.std(ddof=1)) if len(vals) > 1 else math.nan,
                    "ci_low": mean - half,
                    "ci_high": mean + half,
                    "confidence": confidence,
                }
            )
    return pd.DataFrame(out)


def paired_win_rates(df, metrics: Sequence[str], models: Sequence[str], base: str = "base", confidence: float = 0.95):
    """Win rate of each non-base model over `base` per metric, on images paired by (prompt index, sample)."""
    import pandas as pd

    ref = df[df["model"] == base].set_index(["index", "n"])
    out = []
    for model in models:
        if model == base:
            continue
        other = df[df["model"] == model].set_index(["index", "n"])
        common = ref.index.intersection(other.index)
        for m in metrics:
            if m not in df:
                continue
            wr = win_rate(
                other.loc[common, m].astype(float).to_numpy(),
                ref.loc[common, m].astype(float).to_numpy(),
                confidence=confidence,
            )
            out.append({"model": model, "base": base, "metric": m, **wr.as_dict()})
    return pd.DataFrame(out)


def _table(summary, metrics: Sequence[str], models: Sequence[str]) -> str:
    head = "| Model | " + " | ".join(f"{metric_title(m)} ↑" for m in metrics) + " |"
    lines = [head, "|" + "---|" * (len(metrics) + 1)]
    for model in models:
        cells = []
        for m in metrics:
            r = summary[(summary["model"] == model) & (summary["metric"] == m)].iloc[0]
            digits = 2 if m == JPEG else 4
            half = (r["ci_high"] - r["ci_low"]) / 2
            cells.append(
                f"{r['mean']:.{digits}f} ± {half:.{digits}f}" if not math.isnan(half) else f"{r['mean']:.{digits}f}"
            )
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _win_table(wins) -> str:
    if wins.empty:
        return "(no LoRA to compare)"
    lines = ["| Model | Metric | Win rate over base | 95% CI | W / T / L |", "|---|---|---|---|---|"]
    for _, r in wins.iterrows():
        lines.append(
            f"| {r['model']} | {metric_title(r['metric'])} | {r['rate']:.3f} | [{r['low']:.3f}, {r['high']:.3f}] | "
            f"{r['wins']} / {r['ties']} / {r['losses']} |"
        )
    return "\n".join(lines)


def _plot(summary, metrics: Sequence[str], models: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(2.6 * len(metrics) + 1, 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        sub = summary[summary["metric"] == m].set_index("model").loc[list(models)]
        err = np.vstack([sub["mean"] - sub["ci_low"], sub["ci_high"] - sub["mean"]])
        ax.errorbar(range(len(models)), sub["mean"], yerr=np.nan_to_num(err), fmt="o", capsize=4, color="C0")
        ax.set_xlim(-0.5, len(models) - 0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(range(len(models)), list(models), rotation=30, ha="right", fontsize=8)
        ax.set_title(metric_title(m), fontsize=9)
        lo, hi = np.nanmin(sub["ci_low"].fillna(sub["mean"])), np.nanmax(sub["ci_high"].fillna(sub["mean"]))
        pad = 0.15 * (hi - lo) if hi > lo else 0.05 * abs(hi) + 1e-6
        ax.set_ylim(lo - pad, hi + pad)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _grids(images_dir: Path, out_dir: Path, models: Sequence[str], indices: Sequence[int], seeds: int) -> None:
    """One PNG per prompt: a row per model, a column per sample (missing images left black)."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    for index in indices:
        tiles = {}
        for mi, model in enumerate(models):
            for n in range(seeds):
                p = images_dir / model / f"{index:05d}" / "samples" / f"{n:05d}.png"
                if p.is_file():
                    with Image.open(p) as im:
                        tiles[mi, n] = im.convert("RGB")
        if not tiles:
            continue
        w, h = next(iter(tiles.values())).size
        grid = Image.new("RGB", (w * seeds, h * len(models)))
        for (mi, n), im in tiles.items():
            grid.paste(im.resize((w, h)), (n * w, mi * h))
        grid.save(out_dir / f"{index:05d}.png")


def write_report(
    outdir: str | Path,
    rows: list[dict],
    metrics: Sequence[str],
    models: Sequence[str],
    seeds_per_prompt: int,
    grid_prompts: int = 8,
    confidence: float = 0.95,
) -> dict[str, Path]:
    """Write per_image.{csv,parquet}, per_prompt.csv, summary.{csv,md}, win_rates.csv, summary.png and
    grids/<index>.png into `outdir`; returns the paths by name."""
    import pandas as pd

    out = Path(outdir)
    metrics = [m for m in metrics]
    df = pd.DataFrame(rows)
    if df.empty:
        raise DataError(f"{out}: no scored images to report")
    df = df.sort_values(["model", "index", "n"], key=lambda s: s.map(models.index) if s.name == "model" else s)
    paths = {
        "per_image_csv": out / "per_image.csv",
        "per_image_parquet": out / "per_image.parquet",
        "per_prompt": out / "per_prompt.csv",
        "summary_csv": out / "summary.csv",
        "summary_md": out / "summary.md",
        "win_rates": out / "win_rates.csv",
        "plot": out / "summary.png",
        "grids": out / "grids",
    }
    df.to_csv(paths["per_image_csv"], index=False)
    df.to_parquet(paths["per_image_parquet"], index=False)
    per_prompt = df.groupby(["model", "index", "prompt"], sort=False)[list(metrics)].mean().reset_index()
    per_prompt.to_csv(paths["per_prompt"], index=False)
    summary = summarize(df, metrics, models, confidence)
    summary.to_csv(paths["summary_csv"], index=False)
    wins = paired_win_rates(df, metrics, models, confidence=confidence)
    wins.to_csv(paths["win_rates"], index=False)
    n_prompts = df["index"].nunique()
    text = [
        f"# Generation evaluation ({n_prompts} prompts × {seeds_per_prompt} seeds)",
        "",
        f"Mean ± half-width of the {confidence:.0%} CI (prompts as units). JPEG = kB at Pillow quality 95.",
        "",
        _table(summary, metrics, models),
        "",
        "## Win rate over the base model (same prompt and noise; ties ½; Wilson CI)",
        "",
        _win_table(wins),
        "",
    ]
    paths["summary_md"].write_text("\n".join(text), encoding="utf-8")
    _plot(summary, metrics, models, paths["plot"])
    indices = sorted(df["index"].unique())[:grid_prompts]
    _grids(out / "images", paths["grids"], models, indices, seeds_per_prompt)
    return paths
