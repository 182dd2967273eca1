"""`icthp build-labels`: ICT labels (paper eq. 2-8) for a triplet table, written as a labelled copy.

    icthp build-labels --data train.jsonl -o train_labeled.jsonl [--theta 0.3 | --theta-percentile 10] [--tokenizer hf]

theta defaults to the 10th percentile of CLIP(I3, P_easy) over the data; the chosen value is printed and stored in
`<output>.meta.json`. `icthp train-ict` does the same automatically when labels are missing.
"""

from __future__ import annotations

import argparse
import json
import sys

from icthp_cli.options import add_output_argument, user_path
from icthp_core.training.config import TOKENIZER_NAMES


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--data", required=True, help="triplets: .jsonl/.csv/.parquet (Pick-High .pkl with --trust-pickle)")
    add_output_argument(p, ".jsonl or .parquet (parquet needed for embedded image bytes)", required=True)
    p.add_argument("--clip", default="laion/CLIP-ViT-H-14-laion2B-s32B-b79K", help="base CLIP: hub id or local folder")
    p.add_argument("--theta", type=float, default=None, help="ICT threshold (default: from --theta-percentile)")
    p.add_argument("--theta-percentile", type=float, default=10.0, help="percentile of CLIP(I3, P_easy) (10)")
    p.add_argument("--image-root", help="folder for relative image paths (default: the data file's folder)")
    p.add_argument("--trust-pickle", action="store_true", help="allow Pick-High .pkl files (pickle runs code)")
    p.add_argument("--batch-size", type=int, default=64, help="images per CLIP batch (64)")
    p.add_argument("--device", default=None, help="cuda, cpu (default: cuda if available)")
    p.add_argument(
        "--tokenizer",
        choices=TOKENIZER_NAMES,
        default="open_clip",
        help="prompt tokenisation (the training option `tokenizer`: open_clip = paper recipe, hf = upstream recipe)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the data report (stderr) and `{"out", "theta", "rows"}` as one JSON line (stdout)."""
    from icthp_core.training.build_labels import label_file

    with user_path("--output", args.output, write=True):
        res = label_file(
            args.data,
            args.output,
            clip=args.clip,
            theta=args.theta,
            theta_percentile=args.theta_percentile,
            image_root=args.image_root,
            trust_pickle=args.trust_pickle,
            batch_size=args.batch_size,
            device=args.device,
            tokenizer=args.tokenizer,
        )
    print(res.pop("report"), file=sys.stderr)
    print(json.dumps(res))
    return 0
