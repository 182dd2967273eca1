"""Scores stored in an uploaded PNG by the ComfyUI save node (icthp_core.data.metadata), apart from live ones."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from icthp_core.data.metadata import read_record


@dataclass(frozen=True)
class StoredScores:
    """One image's stored record: scores by metric key, their stored labels, the model name and sources."""

    scores: dict[str, float]
    labels: dict[str, str]
    model: str
    sources: dict[str, str]
    normalize: str | None = None

    def label(self, metric: str) -> str:
        return self.labels.get(metric, metric)

    def sources_text(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.sources.items())


def _as_dict(x: object) -> dict:
    return x if isinstance(x, dict) else {}


def read_stored(path: str | os.PathLike) -> StoredScores | None:
    """The stored scores of ``path``; None when it has none or they are unreadable (the image is still scored)."""
    try:
        record = read_record(path)
        if record is None:
            return None
        scores = {str(m): float(v) for m, v in record["scores"].items()}
    except (OSError, ValueError, TypeError):
        return None
    labels = {m: str(_as_dict(meta).get("label") or m) for m, meta in _as_dict(record.get("metrics")).items()}
    model, normalize = record.get("model"), record.get("normalize")
    return StoredScores(
        scores=scores,
        labels={m: labels.get(m, m) for m in scores},
        model=str(model) if model else "",
        sources={str(k): str(v) for k, v in _as_dict(record.get("sources")).items()},
        normalize=str(normalize) if normalize else None,
    )


def stored_columns(records: Sequence[StoredScores | None]) -> pd.DataFrame:
    """Columns ``stored <label>`` (one per stored metric, in first-seen order) plus ``stored model`` and
    ``stored sources``; no columns at all when no image has stored scores."""
    if not any(records):
        return pd.DataFrame(index=range(len(records)))
    metrics: dict[str, str] = {}
    for r in records:
        for m in r.scores if r else ():
            if m not in metrics:
                col = f"stored {r.label(m)}"
                metrics[m] = col if col not in metrics.values() else f"{col} ({m})"
    df = pd.DataFrame(index=range(len(records)))
    for m, col in metrics.items():
        df[col] = [r.scores.get(m, float("nan")) if r else float("nan") for r in records]
    df["stored model"] = [r.model if r else "" for r in records]
    df["stored sources"] = [r.sources_text() if r else "" for r in records]
    if any(r and r.normalize for r in records):
        df["stored normalize"] = [(r.normalize or "") if r else "" for r in records]
    return df
