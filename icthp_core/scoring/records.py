"""The score record that travels with an image (`icthp_core.data.metadata` holds its PNG format), with each
metric's label and range taken from the registry."""

from __future__ import annotations

from typing import Any

from icthp_core.data.metadata import FORMAT
from icthp_core.scoring.registry import METRICS, metric_label


def build_record(
    scores: dict[str, float],
    prompt: str | None,
    model: str,
    sources: dict[str, str] | None = None,
    normalize: str | None = None,
) -> dict[str, Any]:
    """The metadata record of one image; metric labels and ranges come from the core registry."""
    metrics = {m: {"label": METRICS[m].label, "range": METRICS[m].value_range} for m in scores if m in METRICS}
    return {
        "format": FORMAT,
        "prompt": prompt,
        "model": model,
        "scores": {m: float(v) for m, v in scores.items()},
        "metrics": metrics,
        "sources": dict(sources or {}),
        "normalize": normalize,
    }


def banner_text(scores: dict[str, float], metrics: list[str]) -> str:
    """The banner line: `<label> <score>` for each of `metrics` that has a score."""
    return "  ".join(f"{metric_label(m)} {scores[m]:.3f}" for m in metrics if m in scores)
