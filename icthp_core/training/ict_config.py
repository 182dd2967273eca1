"""Options of stage 1, the ICT model (`icthp train-ict`); light: no torch, so `icthp train-ict --help` is fast."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from icthp_core.evaluation.keys import TRIPLET_KEYS
from icthp_core.training.config import RewardTrainConfig

__all__ = ["ICTConfig"]


@dataclass
class ICTConfig(RewardTrainConfig):
    #: the two recipes (docs/training.md has the source of every value)
    VALIDATION_METRICS: ClassVar[tuple[str, ...]] = TRIPLET_KEYS
    RANGES: ClassVar[dict[str, str]] = {"lam": ">=0", "theta_percentile": ">=0,<=100", "label_batch_size": ">=1"}
    RECIPES: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": dict(
            lr=3e-5, weight_decay=0.0, warmup_steps=500, warmup_type="linear", lr_schedule="constant",
            max_steps=40000, batch_size=32, lam=0.1, max_grad_norm=1.0, best_metric=None, tokenizer="open_clip",
        ),
        "upstream": dict(
            lr=3e-6, weight_decay=0.01, warmup_steps=500, warmup_type="log", lr_schedule="linear",
            max_steps=5000, batch_size=32, lam=0.5, max_grad_norm=1.0, best_metric=None, tokenizer="hf",
        ),
    }  # fmt: skip

    output_dir: str = "runs/ict"
    lr: float = 3e-5
    lam: float = 0.1  # weight of the in-batch negative loss (lambda)
    alpha: float = 20.0  # steepness of w(y)
    beta: float = 6.0  # threshold of w(y)
    score_scale: float = 1.0  # s(P, I) = score_scale * cosine (1: the published ICT score)
    gather_negatives: bool = True  # use every process's images as negatives (DDP)
    theta: float | None = None  # alignment threshold; null = automatic (theta_percentile)
    theta_percentile: float = 10.0
    label_model: str | None = None  # CLIP for the labels; null = base_model
    relabel: bool = False  # rebuild labels even if the data has them
    label_batch_size: int = 64
    preprocess_mode: str = "crop"
    export_name: str = "ICT"
