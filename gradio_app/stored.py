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


def read_stored_noted(path: str | os.PathLike) -> tuple[StoredScores | None, str | None]:
    """The stored scores of ``path`` and, when it has a record that cannot be used (not JSON, nested too deeply, a
    score that is not a number), a one-line note saying why it is ignored; the image is still scored live."""
    try:
        record = read_record(path)
    except OSError:
        return None, None  # unreadable file: the live scoring reports it
    except RecursionError:
        return None, "stored scores ignored (metadata JSON nested too deeply)"
    except ValueError as e:
        return None, f"stored scores ignored ({str(e).removeprefix(f'{path}: ')})"
    except OverflowError:  # an integer too large for a float (the reader's finiteness check converts it)
        return None, "stored scores ignored (a stored number is too large)"
    if record is None:
        return None, None
    scores: dict[str, float] = {}
    for m, v in record["scores"].items():
        try:
            scores[str(m)] = float(v)
        except (TypeError, ValueError, OverflowError):
            return None, f"stored scores ignored (score {str(m)[:40]!r} is not a number)"
    labels = {m: str(_as_dict(meta).get("label") or m) for m, meta in _as_dict(record.get("metrics")).items()}
    model, normalize = record.get("model"), record.get("normalize")
    return StoredScores(
        scores=scores,
        labels={m: labels.get(m, m) for m in scores},
        model=str(model) if model else "",
        sources={str(k): str(v) for k, v in _as_dict(record.get("sources")).items()},
        normalize=str(normalize) if normalize else None,
    ), None


def read_stored(path: str | os.PathLike) -> StoredScores | None:
    """The stored scores of ``path``; None when it has none or they are unreadable (the image is still scored)."""
    return read_stored_noted(path)[0]


def stored_columns(records: Sequence[StoredScores | None]) -> pd.DataFrame:
    """Columns ``stored <label>`` (one per stored metric, in first-seen order) plus ``stored model`` and
    ``stored sources``; no columns at all when no image has stored scores.

    Linear in the number of stored metrics (one dict pass, one DataFrame built at once): an image storing thousands
    of metrics costs milliseconds, not the quadratic column-by-column insertion it once did."""
    if not any(records):
        return pd.DataFrame(index=range(len(records)))
    metrics: dict[str, str] = {}
    used: set[str] = set()
    for r in records:
        for m in r.scores if r else ():
            if m not in metrics:
                col = f"stored {r.label(m)}"
                col = col if col not in used else f"{col} ({m})"
                metrics[m] = col
                used.add(col)
    nan = float("nan")
    data: dict[str, list] = {col: [r.scores.get(m, nan) if r else nan for r in records] for m, col in metrics.items()}
    data["stored model"] = [r.model if r else "" for r in records]
    data["stored sources"] = [r.sources_text() if r else "" for r in records]
    if any(r and r.normalize for r in records):
        data["stored normalize"] = [(r.normalize or "") if r else "" for r in records]
    return pd.DataFrame(data, index=range(len(records)))
