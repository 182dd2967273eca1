"""Build ICT labels (paper eq. 2-8) for a triplet table with a base CLIP, and write a labelled copy (`icthp
build-labels`).

theta defaults to the 10th percentile of CLIP(I3, P_easy) over the data (see `icthp_core.training.labels`); the chosen
value is returned and stored in `<output>.meta.json`. `train_ict` does the same automatically when labels are missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from icthp_core.data.datasets import load_triplets, write_triplets
from icthp_core.scoring.text import TOKENIZERS

DEFAULT_CLIP = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


def label_file(
    data: str | os.PathLike,
    output: str | os.PathLike,
    clip: str = DEFAULT_CLIP,
    theta: float | None = None,
    theta_percentile: float = 10.0,
    image_root: str | None = None,
    trust_pickle: bool = False,
    batch_size: int = 64,
    device: str | None = None,
    tokenizer: str = "open_clip",
) -> dict[str, Any]:
    """Label the triplets of `data` and write them to `output` (.jsonl or .parquet) with `<output>.meta.json`.

    Args:
        data: triplet table (.jsonl/.csv/.parquet, or Pick-High .pkl with `trust_pickle`).
        output: labelled copy (.parquet needed for embedded image bytes).
        clip: hub id or local folder of the base CLIP.
        theta: the ICT threshold; None: the `theta_percentile`-th percentile of CLIP(I3, P_easy) over the data.
        image_root: folder of relative image paths (default: the data file's folder).
        batch_size, device: how the CLIP runs.
        tokenizer: prompt tokenisation (`open_clip` = paper recipe, `hf` = upstream recipe).

    Returns:
        `{"out", "theta", "rows", "report"}` (`report`: the data report's summary line).
    """
    from icthp_core.errors import ConfigError

    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"--tokenizer {tokenizer!r}: expected one of {', '.join(TOKENIZERS)}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
    if theta is None and not 0 <= theta_percentile <= 100:
        raise ConfigError(f"--theta-percentile {theta_percentile}: must be in [0, 100]")
    percentile = None if theta is not None else theta_percentile  # what chose theta (None: given)
    records, report = load_triplets(data, image_root=image_root, trust_pickle=trust_pickle)
    from icthp_core.checkpoints.loading import load_clip, parse_device  # the data is checked before models load
    from icthp_core.scoring.models import ICTModel
    from icthp_core.training.common import image_size
    from icthp_core.training.ict import build_labels

    dev = parse_device(device)
    model = ICTModel(load_clip(clip, device=dev))
    size = image_size(model.clip.visual)
    labeled, theta = build_labels(records, model, size, theta, theta_percentile, batch_size, dev, tokenizer=tokenizer)
    out = write_triplets(labeled, output)
    meta = {
        "theta": theta,
        "theta_percentile": percentile,
        "clip": clip,
        "tokenizer": tokenizer,
        "source": str(data),
        "data_report": report.to_dict(),
    }
    Path(str(out) + ".meta.json").write_text(json.dumps(meta, indent=2))
    return {"out": str(out), "theta": theta, "rows": len(labeled), "report": report.summary()}
