"""Reward-hacking monitors for DRaFT training (paper Tables 2/3: a CLIP-tuned model "crashes").

Every `sample_every` steps the trainer renders the same held-out prompts with the same seeds; on those images the
monitor computes (names as logged in ``metrics.jsonl``):

- ``monitor/gold/<metric>``: metrics the run does not optimise, mean over the images: any registry metric
  (``aesthetic``, ``clip``, ``imagereward``, ``hp`` ...) and ``jpeg`` (JPEG size in kB at quality 95, paper
  Table 2, :func:`icthp_core.evaluation.image_stats.jpeg_size_kb`);
- ``monitor/collapse/saturation``: mean HSV saturation (over-saturation is a classic reward hack);
- ``monitor/collapse/hist_drift``: total-variation distance of the pooled RGB histogram from the first
  monitored step (0 = same colours, 1 = disjoint);
- ``monitor/collapse/diversity``: mean pairwise L2 distance, across seeds of one prompt, of the reward model's own
  L2-normalised image features (mode collapse drives it to 0), averaged over prompts.

Early stopping: with ``early_stop_metric`` (one of the names above without ``monitor/``, e.g. ``gold/aesthetic``
or ``collapse/diversity``) the run stops once that value is below its first-step baseline by more than
``early_stop_drop``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from icthp_core.errors import ConfigError
from icthp_core.evaluation.image_stats import color_histogram, histogram_distance, jpeg_size_kb, saturation

__all__ = ["RewardHackingMonitor", "pairwise_feature_diversity", "to_uint8_images", "gold_metric_fns"]

GoldFn = Callable[[torch.Tensor, list[str]], torch.Tensor]


def to_uint8_images(images: torch.Tensor) -> list[np.ndarray]:
    """[B,3,H,W] floats in 0..1 -> HWC uint8 arrays (as saved to PNG)."""
    arr = (images.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return list(arr)


def pairwise_feature_diversity(features: torch.Tensor, groups: int) -> float:
    """Mean pairwise L2 distance of L2-normalised features within each of `groups` consecutive equal blocks
    (the seeds of one prompt), averaged over the blocks; 0 when a block has fewer than 2 rows."""
    f = torch.nn.functional.normalize(features.detach().float(), dim=-1)
    per = f.shape[0] // groups
    if per < 2:
        return 0.0
    vals = []
    for g in range(groups):
        block = f[g * per : (g + 1) * per]
        d = torch.cdist(block, block)
        vals.append(d.sum().item() / (per * (per - 1)))
    return float(sum(vals) / len(vals))


def gold_metric_fns(
    names: Sequence[str], sources: dict[str, str] | None, device, dtype: str = "fp32"
) -> dict[str, GoldFn]:
    """Functions (images 0..1, prompts) -> [B] scores for each gold metric name (`jpeg` or a registry metric)."""
    fns: dict[str, GoldFn] = {}
    model_metrics = [n for n in names if n != "jpeg"]
    if "jpeg" in names:
        fns["jpeg"] = lambda im, pr: torch.tensor([jpeg_size_kb(a) for a in to_uint8_images(im)])
    if model_metrics:
        from icthp_core.scoring.scorer import MultiScorer

        scorer = MultiScorer(model_metrics, sources=sources, device=device, dtype=dtype)
        for m in model_metrics:
            fns[m] = (lambda mm: lambda im, pr: scorer.score(im.float(), pr)[mm])(m)
    return fns


class RewardHackingMonitor:
    """Computes the monitor values on fixed-seed images; keeps the first step's baselines (saved on checkpoints)."""

    def __init__(
        self,
        gold: dict[str, GoldFn],
        features: Callable[[torch.Tensor], torch.Tensor] | None = None,
        early_stop_metric: str | None = None,
        early_stop_drop: float = 0.0,
    ):
        self.gold, self.features = gold, features
        self.early_stop_metric, self.early_stop_drop = early_stop_metric, early_stop_drop
        self.baseline: dict[str, float] = {}
        self.base_hist: list[float] | None = None

    @torch.no_grad()
    def compute(self, images: torch.Tensor, prompts: list[str], n_prompts: int) -> dict[str, float]:
        """Values (without the ``monitor/`` prefix) for images [B,3,H,W] in 0..1 laid out prompt-major."""
        out: dict[str, float] = {}
        for name, fn in self.gold.items():
            out[f"gold/{name}"] = float(fn(images, prompts).float().mean())
        arrays = to_uint8_images(images)
        out["collapse/saturation"] = float(np.mean([saturation(a) for a in arrays]))
        hist = color_histogram(arrays)
        if self.base_hist is None:
            self.base_hist = hist.tolist()
        out["collapse/hist_drift"] = histogram_distance(np.asarray(self.base_hist), hist)
        if self.features is not None:
            out["collapse/diversity"] = pairwise_feature_diversity(self.features(images), n_prompts)
        for k, v in out.items():
            self.baseline.setdefault(k, v)
        return out

    def stop_reason(self, values: dict[str, float]) -> str | None:
        """A message when the early-stop metric fell below its baseline by more than the margin, else None."""
        k = self.early_stop_metric
        if not k:
            return None
        if k not in values:
            raise ConfigError(f"early_stop_metric={k!r}: the monitor computes {sorted(values)}")
        drop = self.baseline[k] - values[k]
        if drop > self.early_stop_drop:
            return f"{k} fell from {self.baseline[k]:.4g} to {values[k]:.4g} (drop {drop:.4g} > {self.early_stop_drop})"
        return None

    def save(self, directory: str | Path) -> None:
        state = {"baseline": self.baseline, "base_hist": self.base_hist}
        (Path(directory) / "monitor.json").write_text(json.dumps(state))

    def load(self, directory: str | Path) -> None:
        f = Path(directory) / "monitor.json"
        if f.is_file():
            state = json.loads(f.read_text())
            self.baseline, self.base_hist = state["baseline"], state["base_hist"]
