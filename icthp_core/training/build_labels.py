"""Build ICT labels (paper eq. 2-8) for a triplet table with a base CLIP, and write a labelled copy.

    icthp build-labels --data train.jsonl --out train_labeled.jsonl \
        [--clip laion/CLIP-ViT-H-14-laion2B-s32B-b79K] [--theta 0.3 | --theta-percentile 10] [--tokenizer hf]

theta defaults to the 10th percentile of CLIP(I3, P_easy) over the data (see `icthp_core.training.labels`); the chosen
value is printed and stored in `<out>.meta.json`. `train_ict` does the same automatically when labels are missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from icthp_core.checkpoints.loading import load_clip, parse_device
from icthp_core.data.datasets import load_triplets, write_triplets
from icthp_core.scoring.models import ICTModel
from icthp_core.scoring.text import TOKENIZERS
from icthp_core.training.common import image_size
from icthp_core.training.ict import build_labels


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True, help=".jsonl or .parquet (parquet needed for embedded image bytes)")
    ap.add_argument("--clip", default="laion/CLIP-ViT-H-14-laion2B-s32B-b79K", help="hub id or local CLIP")
    ap.add_argument("--theta", type=float, default=None)
    ap.add_argument("--theta-percentile", type=float, default=10.0)
    ap.add_argument("--image-root")
    ap.add_argument("--trust-pickle", action="store_true")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--tokenizer",
        choices=tuple(TOKENIZERS),
        default="open_clip",
        help="prompt tokenisation (the training option `tokenizer`: open_clip = paper recipe, hf = upstream recipe)",
    )
    a = ap.parse_args(argv)
    device = parse_device(a.device)
    records, report = load_triplets(a.data, image_root=a.image_root, trust_pickle=a.trust_pickle)
    print(report.summary(), file=sys.stderr)
    model = ICTModel(load_clip(a.clip, device=device))
    labeled, theta = build_labels(
        records,
        model,
        image_size(model.clip.visual),
        a.theta,
        a.theta_percentile,
        a.batch_size,
        device,
        tokenizer=a.tokenizer,
    )
    out = write_triplets(labeled, a.out)
    meta = {
        "theta": theta,
        "theta_percentile": None if a.theta else a.theta_percentile,
        "clip": a.clip,
        "tokenizer": a.tokenizer,
        "source": a.data,
        "data_report": report.to_dict(),
    }
    Path(str(out) + ".meta.json").write_text(json.dumps(meta, indent=2))
    print(json.dumps({"out": str(out), "theta": theta, "rows": len(labeled)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
