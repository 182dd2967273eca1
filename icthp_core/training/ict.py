"""Stage 1: train the ICT model (full fine-tuning of a CLIP on ICT labels, paper §4.2.2).

    accelerate launch -m icthp_cli train-ict --config train/configs/ict_upstream.yaml [key=value ...]

Missing ICT labels are built first (eq. 2-8) with the base CLIP (`label_model`), theta from `theta` or
automatically from the `theta_percentile` of CLIP(I3, P_easy); they are written to
`<output_dir>/labels/train_labeled.{jsonl,parquet}` with `labels_meta.json` (theta, model) and reused on resume.
The trained model is exported to `<output_dir>/ICT` in the published layout.
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
from icthp_core.data.datasets import TripletRecord, load_triplets, write_triplets
from icthp_core.scoring.export import save_ict
from icthp_core.scoring.models import ICTModel
from icthp_core.scoring.text import tokenizer_for
from icthp_core.training import engine
from icthp_core.training.common import (
    image_size,
    load_triplet_records,
    score_triplet_loader,
    triplet_dataset,
    triplet_metrics,
)
from icthp_core.training.ict_config import ICTConfig
from icthp_core.training.labels import build_ict_labels, clip_similarities
from icthp_core.training.losses import ict_loss

logger = logging.getLogger("icthp.train.ict")


class ICTTrainModule(nn.Module):
    """DDP-wrapped forward: image features [3B, D] and text features [2B, D]."""

    def __init__(self, ict: ICTModel):
        super().__init__()
        self.ict = ict

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ict.encode_image(pixels), self.ict.encode_text(tokens)


def build_labels(
    records: list[TripletRecord],
    model: ICTModel,
    size: int,
    theta: float | None,
    percentile: float,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    mode: str = "crop",
    tokenizer: str = "open_clip",
) -> tuple[list[TripletRecord], float]:
    """Records with ICT labels computed from `model`'s CLIP similarities (prompts tokenised with the `tokenizer`
    flavour, "open_clip" or "hf"); returns (records, theta)."""
    ds = triplet_dataset(records, None, size, mode, tokenizer=tokenizer)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=_collate)
    parts: dict[str, list[torch.Tensor]] = {}
    was_training = model.training
    model.eval()
    for batch in loader:
        px = [batch[f"pixels_{k}"].to(device) for k in (1, 2, 3)]
        sims = clip_similarities(
            model.encode_image, model.encode_text, px, batch["easy_tokens"].to(device), batch["ref_tokens"].to(device)
        )
        for k, v in sims.items():
            parts.setdefault(k, []).append(v)
    model.train(was_training)
    sims = {k: torch.cat(v) for k, v in parts.items()}
    labels, theta = build_ict_labels(sims, theta=theta, percentile=percentile)
    out = [
        TripletRecord(
            r.easy_prompt,
            r.refine_prompt,
            r.images,
            {k: float(getattr(labels, k)[i]) for k in ("E1", "E2", "R1", "R2")},
        )
        for i, r in enumerate(records)
    ]
    return out, theta


def _collate(batch):
    from icthp_core.data.datasets import collate

    return collate(batch)


class ICTStage(engine.Stage):
    name = "ict"

    def __init__(self, cfg: ICTConfig):
        tokenizer_for(cfg.tokenizer)  # a bad name fails before any model is loaded
        self.config = cfg
        self.out = Path(cfg.output_dir)
        self.theta: float | None = None
        self.reports: dict[str, Any] = {}

    def build(self, accelerator) -> nn.Module:
        cfg = self.config
        clip = load_clip(cfg.base_model, device="cpu", dtype="fp32")
        ict = ICTModel(clip, preprocess_mode=cfg.preprocess_mode)
        ict.requires_grad_(True)
        for name in ("logit_scale", "logit_bias"):  # unused by the ICT score; frozen so DDP sees no unused grads
            p = getattr(clip, name, None)
            if isinstance(p, nn.Parameter):
                p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            clip.set_grad_checkpointing(True)
        self.size = image_size(clip.visual)
        self.module = ICTTrainModule(ict).train()
        return self.module

    @staticmethod
    def _labels_reusable(target: Path, meta_file: Path, wanted: dict) -> bool:
        """Labels built earlier (e.g. before a resume) are reused only for the same data and label settings
        (tokenizer included; labels from before that key existed were built with open_clip's)."""
        if not (target.is_file() and meta_file.is_file()):
            return False
        meta = {"tokenizer": "open_clip", **json.loads(meta_file.read_text())}
        return all(meta.get(k) == v for k, v in wanted.items())

    def _labeled_path(self, records) -> Path:
        has_bytes = any(isinstance(x, bytes) for r in records for x in r.images)
        return self.out / "labels" / ("train_labeled.parquet" if has_bytes else "train_labeled.jsonl")

    def train_dataset(self, accelerator):
        cfg = self.config
        records, report = load_triplet_records(cfg.train_data, cfg, cfg.limit_train, report_dir=self.out, tag="train")
        self.reports["train"] = report.to_dict()
        if cfg.relabel or any(r.labels is None for r in records):
            target = self._labeled_path(records)
            meta_file = self.out / "labels" / "labels_meta.json"
            wanted = {
                "theta_given": cfg.theta,
                "theta_percentile": cfg.theta_percentile,
                "label_model": cfg.label_model or cfg.base_model,
                "source": str(cfg.train_data),
                "limit": cfg.limit_train,
                "tokenizer": cfg.tokenizer,
            }
            if accelerator.is_main_process and not self._labels_reusable(target, meta_file, wanted):
                if cfg.label_model and cfg.label_model != cfg.base_model:
                    label_model = ICTModel(load_clip(cfg.label_model, device=accelerator.device))
                else:
                    label_model = self.module.ict.to(accelerator.device)
                labeled, theta = build_labels(
                    records,
                    label_model,
                    self.size,
                    cfg.theta,
                    cfg.theta_percentile,
                    cfg.label_batch_size,
                    accelerator.device,
                    cfg.preprocess_mode,
                    cfg.tokenizer,
                )
                write_triplets(labeled, target)
                meta_file.write_text(json.dumps({"theta": theta, **wanted}, indent=2))
                logger.info("ICT labels built with theta=%.4f -> %s", theta, target)
            accelerator.wait_for_everyone()  # every rank passes this barrier once (same data on all ranks)
            self.theta = json.loads(meta_file.read_text())["theta"]
            records, label_report = load_triplets(target, require_labels=True)
            if label_report.kept < label_report.total:  # rows lost reading the labels back: name that file
                report = label_report
        return triplet_dataset(records, report, self.size, cfg.preprocess_mode, cfg.cache_images, cfg.tokenizer)

    def val_dataset(self, accelerator):
        cfg = self.config
        if not cfg.val_data:
            return None
        records, report = load_triplet_records(
            cfg.val_data, cfg, cfg.limit_val, report_dir=self.out, tag="val", use_labels=False
        )
        self.reports["val"] = report.to_dict()
        return triplet_dataset(records, report, self.size, cfg.preprocess_mode, cfg.cache_images, cfg.tokenizer)

    def loss(self, module, batch, accelerator):
        cfg = self.config
        b = batch["pixels_1"].shape[0]
        pixels = torch.cat([batch["pixels_1"], batch["pixels_2"], batch["pixels_3"]])
        tokens = torch.cat([batch["easy_tokens"], batch["ref_tokens"]])
        img, txt = module(pixels, tokens)
        img, txt = img.float(), txt.float()
        images = list(img.chunk(3))
        te, tr = txt.chunk(2)
        offset = 0
        if cfg.gather_negatives and accelerator.num_processes > 1:
            import torch.distributed.nn.functional as dist_fn

            images = [torch.cat(dist_fn.all_gather(x)) for x in images]
            offset = accelerator.process_index * b
        out = ict_loss(
            te,
            tr,
            images,
            batch["labels_easy"],
            batch["labels_ref"],
            cfg.lam,
            cfg.alpha,
            cfg.beta,
            cfg.score_scale,
            offset,
        )
        return out.loss, {"mse": out.mse.item(), "negative": out.negative.item()}

    def evaluate(self, module, loader, accelerator):
        ict = module.ict

        def score(batch, k):
            return ict(batch[f"pixels_{k}"], batch["easy_tokens"])

        return triplet_metrics(*score_triplet_loader(loader, score, accelerator.device))

    def export(self, module, accelerator, name=None):
        ict = copy.deepcopy(module.ict).float().cpu().eval()  # the training model stays as it is
        path = save_ict(ict, self.out / (name or self.config.export_name), config=getattr(ict.clip, "hf_config", None))
        logger.info("exported ICT to %s", path)
        return path

    def summary(self):
        return {"theta": self.theta, "data": self.reports}


def train(cfg: ICTConfig) -> dict:
    """Train the ICT reward model (stage 1): the summary (theta, data report)."""
    return engine.run(ICTStage(cfg))
