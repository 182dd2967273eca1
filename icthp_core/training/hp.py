"""Stage 2: train the HP model (paper §4.2.3) with the ICT model frozen.

    accelerate launch -m icthp_cli train-hp --config train/configs/hp_upstream.yaml [key=value ...]

HP backbone = the vision tower of `base_model` (LAION CLIP-H) + an MLP head, trained on I1 < I2 < I3 (or, for a
pairs table, on winner > loser with ties skipped). Two recipes (`recipe: paper | upstream`, docs/training.md):
- paper: stem (patch/position embeddings, pre-LayerNorm) and the first half of the blocks frozen; the rest, the
  post-LayerNorm, the projection and the head trained with the margin loss of eq. 13 (m = 0.2);
- upstream (BarretBa/ICTHP): of [blocks..., post-LN] the first int(n * 0.5) frozen (blocks 0-15 of CLIP-H),
  the projection frozen, embeddings and pre-LN trainable; loss = HP margin loss (m = 0.3) + the ICT-HP term
  (:func:`~icthp_core.training.losses.icthp_margin_loss`, frozen ICT in the loop) summed over the gathered batch
  and scaled to upstream's world batch of 256 (`reference_world_batch`); the best of the validation steps at
  multiples of 5000 and the last step, by upstream's ICT-HP accuracy, is exported.
Exported to `<output_dir>/HP` (`hp_backbone/`, `hp_scorer/`).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icthp_core.checkpoints.loading import load_clip
from icthp_core.data.datasets import PairDataset, detect_kind, load_pairs
from icthp_core.errors import ConfigError
from icthp_core.evaluation.metrics import pairwise_accuracy
from icthp_core.evaluation.protocols import upstream_validation_accuracy
from icthp_core.scoring.export import save_hp
from icthp_core.scoring.models import HPHead, HPModel, ICTModel
from icthp_core.scoring.text import tokenizer_for
from icthp_core.training import engine
from icthp_core.training.common import (
    image_size,
    load_triplet_records,
    make_transform,
    score_triplet_loader,
    triplet_dataset,
    triplet_metrics,
)
from icthp_core.training.hp_config import HPConfig
from icthp_core.training.losses import gather_batch, hp_stage_loss, pair_margin_loss

logger = logging.getLogger("icthp.train.hp")


def new_head(in_dim: int, hidden: tuple[int, ...], seed: int) -> HPHead:
    """A head initialised as upstream: weights N(0, 1/(in_dim + 1)), biases 0; `hidden` = 4 layer widths."""
    if len(hidden) != 4:
        raise ConfigError(f"head_dims must list 4 hidden widths (the published head is 1024,128,64,16), got {hidden}")
    head = HPHead((in_dim, *hidden, 1))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=g) / (in_dim + 1))
            else:
                p.zero_()
    return head


def freeze_first_half(visual: nn.Module, fraction: float) -> int:
    """Paper rule: freeze the stem and the first `fraction` of the blocks of an open_clip VisionTransformer.

    Returns the number of frozen blocks. Everything after them (blocks, ln_post, proj) stays trainable.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"freeze_fraction must be in [0, 1], got {fraction}")
    visual.requires_grad_(True)
    blocks = visual.transformer.resblocks
    n_frozen = int(len(blocks) * fraction)
    if n_frozen > 0:
        for name, p in visual.named_parameters():
            if not (name.startswith("transformer.") or name.startswith(("ln_post", "proj", "attn_pool"))):
                p.requires_grad_(False)  # conv1, class/positional embedding, ln_pre, patch dropout
        for blk in blocks[:n_frozen]:
            blk.requires_grad_(False)
    return n_frozen


def freeze_upstream(visual: nn.Module, fraction: float) -> int:
    """Upstream rule (`set_grad_with_rate` in BarretBa/ICTHP `icthp_model.py`) on an open_clip VisionTransformer.

    Of the layers [blocks..., ln_post] the first int(len * fraction) are frozen, the rest trainable; the
    projection is frozen; the embeddings and ln_pre are never touched (trainable). fraction = 0 freezes the whole
    tower, as upstream. Returns the number of frozen blocks.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"freeze_fraction must be in [0, 1], got {fraction}")
    if fraction == 0:
        visual.requires_grad_(False)
        return len(visual.transformer.resblocks)
    visual.requires_grad_(True)
    layers = [*visual.transformer.resblocks, visual.ln_post]
    n_fix = int(len(layers) * fraction)
    for i, layer in enumerate(layers):
        layer.requires_grad_(i >= n_fix)
    if isinstance(getattr(visual, "proj", None), nn.Parameter):
        visual.proj.requires_grad_(False)
    return min(n_fix, len(visual.transformer.resblocks))


FREEZE_RULES = {"paper": freeze_first_half, "upstream": freeze_upstream}


class HPTrainModule(nn.Module):
    """DDP-wrapped forward: raw head outputs [N] (before the sigmoid) for a batch of images."""

    def __init__(self, hp: HPModel):
        super().__init__()
        self.hp = hp

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.hp.head(self.hp.encode_image(pixels)).squeeze(-1)


class HPStage(engine.Stage):
    name = "hp"

    def __init__(self, cfg: HPConfig):
        if cfg.score_space not in ("logit", "sigmoid"):
            raise ConfigError(f"score_space={cfg.score_space!r}: expected 'logit' or 'sigmoid'")
        if cfg.freeze_rule not in FREEZE_RULES:
            raise ConfigError(f"freeze_rule={cfg.freeze_rule!r}: expected one of {sorted(FREEZE_RULES)}")
        tokenizer_for(cfg.tokenizer)  # a bad name fails before any model is loaded
        if cfg.icthp_term_reduction not in ("sum", "mean"):
            raise ConfigError(f"icthp_term_reduction={cfg.icthp_term_reduction!r}: expected 'sum' or 'mean'")
        if cfg.reference_world_batch is not None and cfg.reference_world_batch < 1:
            raise ConfigError(f"reference_world_batch={cfg.reference_world_batch}: expected a positive batch or null")
        if cfg.icthp_loss_weight and not cfg.ict_model:
            raise ConfigError("icthp_loss_weight > 0 needs ict_model (the frozen ICT model of stage 1)")
        self.config = cfg
        self.out = Path(cfg.output_dir)
        self.reports: dict[str, Any] = {}

    def build(self, accelerator) -> nn.Module:
        cfg = self.config
        if cfg.init_hp:
            hp = HPModel.from_pretrained(cfg.init_hp, device="cpu")
        else:
            visual = load_clip(cfg.base_model, vision_only=True, device="cpu", dtype="fp32")
            in_dim = visual.output_dim if hasattr(visual, "output_dim") else visual.proj.shape[1]
            hp = HPModel(visual, new_head(in_dim, tuple(cfg.head_dims), cfg.seed))
        self.n_frozen = FREEZE_RULES[cfg.freeze_rule](hp.visual, cfg.freeze_fraction)
        hp.head.requires_grad_(True)
        hp.fold_head = False
        if cfg.gradient_checkpointing:
            hp.visual.set_grad_checkpointing(True)
        self.size = image_size(hp.visual)
        logger.info("HP backbone: %d of %d blocks frozen", self.n_frozen, len(hp.visual.transformer.resblocks))
        self.module = HPTrainModule(hp).train()
        self.ict = None
        if cfg.ict_model:
            self.ict = ICTModel.from_pretrained(cfg.ict_model, device=accelerator.device).eval().requires_grad_(False)
        return self.module

    def _dataset(self, path: str, limit: int | None, tag: str):
        """Triplets (eq. 13) or preference pairs (winner > loser, ties skipped), by the table's columns."""
        cfg = self.config
        if detect_kind(path, cfg.trust_pickle) == "pairs":
            records, report = load_pairs(path, image_root=cfg.image_root, verify_images=cfg.verify_images, limit=limit)
            (self.out / f"data_report_{tag}.json").write_text(json.dumps(report.to_dict(), indent=2))
            ds = PairDataset(
                records,
                make_transform(self.size, cfg.preprocess_mode),
                tokenizer_for(cfg.tokenizer),
                report,
                cache=cfg.cache_images,
            )
        else:
            records, report = load_triplet_records(path, cfg, limit, report_dir=self.out, tag=tag, use_labels=False)
            ds = triplet_dataset(records, report, self.size, cfg.preprocess_mode, cfg.cache_images, cfg.tokenizer)
        self.reports[tag] = report.to_dict()
        return ds

    def train_dataset(self, accelerator):
        self.out.mkdir(parents=True, exist_ok=True)
        return self._dataset(self.config.train_data, self.config.limit_train, "train")

    def val_dataset(self, accelerator):
        if not self.config.val_data:
            return None
        self._val_ict = None
        return self._dataset(self.config.val_data, self.config.limit_val, "val")

    def loss(self, module, batch, accelerator):
        cfg = self.config
        if "pixels_0" in batch:  # preference pairs
            s = module(torch.cat([batch["pixels_0"], batch["pixels_1"]])).float()
            if cfg.score_space == "sigmoid":
                s = torch.sigmoid(s)
            s0, s1 = s.chunk(2)
            lab = batch["label_0"].float()
            loss = pair_margin_loss(s0, s1, lab, cfg.margin)
            decisive = lab != 0.5
            right = ((s0 > s1) == (lab > 0.5))[decisive].float()
            return loss, {"acc_pairs": right.mean().item() if right.numel() else float("nan")}
        pixels = torch.cat([batch["pixels_1"], batch["pixels_2"], batch["pixels_3"]])
        s = module(pixels).float()
        if cfg.score_space == "sigmoid":
            s = torch.sigmoid(s)
        s = torch.stack(s.chunk(3), dim=1)  # [B, 3]: I1, I2, I3
        ict = None
        if cfg.icthp_loss_weight:
            with torch.no_grad():
                ict = torch.stack(
                    [self.ict(batch[f"pixels_{k}"], batch["easy_tokens"]).float() for k in (1, 2, 3)], dim=1
                )
        if cfg.gather_batch and accelerator.num_processes > 1:
            s, ict = gather_batch(s, ict)
        loss, hp_term, icthp_term = hp_stage_loss(
            s,
            cfg.margin,
            ict,
            cfg.hp_loss_weight,
            cfg.icthp_loss_weight,
            cfg.icthp_term_reduction,
            cfg.reference_world_batch,
        )
        logs = {
            "hp_loss": hp_term.item(),
            "acc_I2>I1": (s[:, 1] > s[:, 0]).float().mean().item(),
            "acc_I3>I2": (s[:, 2] > s[:, 1]).float().mean().item(),
        }
        if icthp_term is not None:
            logs["icthp_loss"] = icthp_term.item()
        return loss, logs

    def evaluate(self, module, loader, accelerator):
        hp = module.hp
        dev = accelerator.device
        if isinstance(loader.dataset, PairDataset):
            s0, s1, lab = [], [], []
            for batch in loader:
                s0.append(module(batch["pixels_0"].to(dev)).float().cpu())
                s1.append(module(batch["pixels_1"].to(dev)).float().cpu())
                lab.append(batch["label_0"].float())
            s0, s1, lab = torch.cat(s0), torch.cat(s1), torch.cat(lab)
            d = lab != 0.5
            better, worse = torch.where(lab > 0.5, s0, s1)[d], torch.where(lab > 0.5, s1, s0)[d]
            return {"pairs_no_ties": pairwise_accuracy(better, worse)}
        logits = score_triplet_loader(loader, lambda b, k: module(b[f"pixels_{k}"]), dev)
        hp_s = [torch.sigmoid(x) for x in logits]
        res = triplet_metrics(*hp_s)
        if self.ict is not None:
            if getattr(self, "_val_ict", None) is None:
                self._val_ict = score_triplet_loader(
                    loader, lambda b, k: self.ict(b[f"pixels_{k}"], b["easy_tokens"]), dev
                )
            prod = [a * b for a, b in zip(self._val_ict, hp_s, strict=True)]
            res.update(triplet_metrics(*prod, prefix="ict_hp/"))  # paper eq. 20: ICT x sigmoid(HP)
            precision = "bf16" if self.config.mixed_precision == "bf16" else "fp32"  # bf16: upstream's ties
            up = upstream_validation_accuracy(
                torch.stack(self._val_ict, 1).numpy(), torch.stack(logits, 1).numpy(), precision
            )  # upstream's selection metric: ICT x softmax over the triplet of HP logits, ties 0
            res.update({f"ict_hp_upstream/{k}": v for k, v in up.items()})
        del hp
        return res

    def export(self, module, accelerator, name=None):
        hp = copy.deepcopy(module.hp).float().cpu().eval()  # the training model stays as it is
        hp.fold_head = True
        path = save_hp(hp, self.out / (name or self.config.export_name), config=getattr(hp.visual, "hf_config", None))
        logger.info("exported HP to %s", path)
        return path

    def summary(self):
        return {"frozen_blocks": self.n_frozen, "data": self.reports}


def train(cfg: HPConfig) -> dict:
    """Train the HP reward model (stage 2, ICT frozen): the summary (frozen blocks, data report)."""
    return engine.run(HPStage(cfg))
