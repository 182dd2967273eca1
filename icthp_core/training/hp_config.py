"""Options of stage 2, the HP model (`icthp train-hp`); light: no torch, so `icthp train-hp --help` is fast."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from icthp_core.evaluation.keys import PAIR_KEYS, TRIPLET_KEYS
from icthp_core.training.config import RewardTrainConfig

__all__ = ["HPConfig"]


@dataclass
class HPConfig(RewardTrainConfig):
    #: the two recipes (docs/training.md has the source of every value)
    #: triplet validation: HP alone, ICT x sigmoid(HP) (`ict_hp/`), upstream's selection metric (`ict_hp_upstream/`);
    #: pair validation: `pairs_no_ties`
    VALIDATION_METRICS: ClassVar[tuple[str, ...]] = (
        *TRIPLET_KEYS,
        *(f"ict_hp/{k}" for k in TRIPLET_KEYS),
        *(f"ict_hp_upstream/{k}" for k in ("accuracy", *PAIR_KEYS, "hp_accuracy")),
        "pairs_no_ties",
    )
    RANGES: ClassVar[dict[str, str]] = {
        "freeze_fraction": ">=0,<=1",
        "hp_loss_weight": ">=0",
        "icthp_loss_weight": ">=0",
    }
    RECIPES: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": dict(
            lr=3e-6, weight_decay=0.0, warmup_steps=500, warmup_type="linear", lr_schedule="constant",
            max_steps=50000, batch_size=32, margin=0.2, freeze_rule="paper", freeze_fraction=0.5,
            hp_loss_weight=1.0, icthp_loss_weight=0.0, max_grad_norm=1.0, best_metric=None, tokenizer="open_clip",
        ),
        "upstream": dict(
            lr=3e-6, weight_decay=0.01, warmup_steps=500, warmup_type="log", lr_schedule="linear",
            max_steps=50000, batch_size=32, margin=0.3, freeze_rule="upstream", freeze_fraction=0.5,
            hp_loss_weight=1.0, icthp_loss_weight=1.0, gather_batch=True, max_grad_norm=1.0,
            icthp_term_reduction="sum", reference_world_batch=256,
            best_metric="ict_hp_upstream/accuracy", best_mode="max", export_candidates_every=5000, tokenizer="hf",
        ),
    }  # fmt: skip

    output_dir: str = "runs/hp"
    lr: float = 3e-6
    margin: float = 0.2
    freeze_rule: str = "paper"  # "paper" | "upstream" (which vision parameters train; see the module docstring)
    freeze_fraction: float = 0.5  # fraction of the vision transformer blocks (from the input side) kept frozen
    hp_loss_weight: float = 1.0
    icthp_loss_weight: float = 0.0  # > 0: add upstream's ICT-HP margin term (needs ict_model)
    # the ICT-HP term over the (gathered) batch: "sum" as upstream (its weight grows with the world batch) or "mean"
    icthp_term_reduction: str = "sum"
    # with "sum": scale the term by reference_world_batch / the batch it was summed over, so a run on fewer GPUs
    # keeps upstream's effective weight (upstream: 8 GPUs x 32 = 256); null: no scaling
    reference_world_batch: int | None = None
    gather_batch: bool = True  # under DDP compute the loss on every process's triplets (as upstream)
    score_space: str = "logit"  # margin on the head output before the sigmoid ("logit", as upstream) or after
    head_dims: tuple[int, ...] = (1024, 128, 64, 16)  # hidden sizes of the head (published HP: 1024,128,64,16)
    init_hp: str | None = None  # continue from a published-layout HP dir instead of base_model + a new head
    ict_model: str | None = None  # frozen ICT (dir/hub id): the ICT-HP loss term and ICT-HP validation accuracy
    preprocess_mode: str = "crop"
    export_name: str = "HP"
