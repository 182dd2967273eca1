"""Helpers shared by the training stages: data sets with reports, and batched triplet scoring."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path

import torch

from icthp_core.data.datasets import LoadReport, TripletDataset, TripletRecord, load_triplets
from icthp_core.data.preprocess import preprocess_pil
from icthp_core.evaluation.metrics import triplet_accuracy
from icthp_core.scoring.text import tokenizer_for


def image_size(visual: torch.nn.Module) -> int:
    size = getattr(visual, "image_size", 224)
    return int(size[0] if isinstance(size, tuple | list) else size)


def make_transform(size: int, mode: str = "crop") -> Callable:
    return functools.partial(preprocess_pil, mode=mode, size=size)


def load_triplet_records(
    path: str,
    cfg,
    limit: int | None,
    require_labels: bool = False,
    report_dir: Path | None = None,
    tag: str = "",
    use_labels: bool = True,
) -> tuple[list[TripletRecord], LoadReport]:
    """Load triplets with the config's data options; the load report is written to `report_dir`."""
    records, report = load_triplets(
        path,
        image_root=cfg.image_root,
        trust_pickle=cfg.trust_pickle,
        require_labels=require_labels,
        verify_images=cfg.verify_images,
        limit=limit,
        use_labels=use_labels,
    )
    if report_dir is not None:
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / f"data_report_{tag}.json").write_text(json.dumps(report.to_dict(), indent=2))
    return records, report


def triplet_dataset(
    records, report, size: int, mode: str = "crop", cache: bool = False, tokenizer: str = "open_clip"
) -> TripletDataset:
    """Triplets with preprocessed images and prompts tokenised by the `tokenizer` flavour ("open_clip" or "hf")."""
    return TripletDataset(records, make_transform(size, mode), tokenizer_for(tokenizer), report, cache=cache)


@torch.no_grad()
def score_triplet_loader(
    loader, score: Callable[[dict[str, torch.Tensor], int], torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run `score(batch_on_device, k)` for k = 1, 2, 3 over a loader -> (s1, s2, s3) CPU tensors."""
    outs: list[list[torch.Tensor]] = [[], [], []]
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        for k in range(3):
            outs[k].append(score(batch, k + 1).float().cpu())
    return tuple(torch.cat(o) for o in outs)  # type: ignore[return-value]


def triplet_metrics(s1, s2, s3, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in triplet_accuracy(s1, s2, s3).items()}
