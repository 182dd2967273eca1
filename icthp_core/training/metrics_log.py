"""The metrics log of every training job: ``<output_dir>/metrics.jsonl`` (one JSON object per line:
``{"step": N, "train/loss": ..., "val/...": ...}``), mirrored to the accelerate trackers when enabled.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

__all__ = ["METRICS_FILE", "MetricsLog", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Append-only JSON lines written by the main process; `fresh=True` starts a new file (a run not resumed)."""

    def __init__(self, path: str | os.PathLike, accelerator=None, fresh: bool = False, trackers: bool = False):
        self.path, self.acc, self.trackers = Path(path), accelerator, trackers
        self.main = accelerator is None or accelerator.is_main_process
        if self.main and fresh and self.path.exists():
            self.path.unlink()  # do not mix curves with an older run

    def log(self, values: dict[str, float | None], step: int) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None}
        if self.trackers and self.acc is not None:
            self.acc.log(values, step=step)
        if self.main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            row = {k: (v if math.isfinite(v) else None) for k, v in values.items()}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **row}) + "\n")


def read_metrics(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """{name: [(step, value), ...]} from metrics.jsonl; a value logged again for a step (after a resume) wins."""
    series: dict[str, dict[int, float]] = {}
    p = Path(path)
    if not p.is_file():
        return {}
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        step = int(row.pop("step"))
        for k, v in row.items():
            series.setdefault(k, {})[step] = float("nan") if v is None else v
    return {k: sorted(v.items()) for k, v in series.items()}
