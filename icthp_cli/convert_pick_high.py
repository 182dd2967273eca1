"""`icthp convert-pick-high`: one-time conversion of Pick-High (pickled DataFrames + image folders) to safe
JSONL/parquet tables.

    icthp convert-pick-high --trust-pickle PATH/Pick-High-Dataset -o data/pick-high [--format parquet --embed]

`PATH/Pick-High-Dataset` holds `Pick-High/{train,val,test}.pkl`, `pick_easy_img/` and `pick_refine_img/`.
Unpickling runs code from the file, hence the explicit `--trust-pickle`; the written tables load safely.
"""

from __future__ import annotations

import argparse
import json

from icthp_cli.options import add_output_argument, user_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("src", help="the Pick-High dataset folder (with Pick-High/*.pkl and the image folders)")
    add_output_argument(p, "output folder for {split}.jsonl|parquet and {split}.report.json", required=True)
    p.add_argument("--splits", default="train,val,test", help="comma-separated splits (train,val,test)")
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl", help="table format (jsonl)")
    p.add_argument("--embed", action="store_true", help="store the image bytes inside the parquet files")
    p.add_argument("--trust-pickle", action="store_true", help="required: the .pkl files are unpickled")


def run(args: argparse.Namespace) -> int:
    """Print {split: written table} as JSON."""
    from icthp_core.data.datasets import convert_pick_high

    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    with user_path("--output", args.output, write=True):
        written = convert_pick_high(
            args.src, args.output, splits, trust_pickle=args.trust_pickle, fmt=args.format, embed_images=args.embed
        )
    print(json.dumps({k: str(v) for k, v in written.items()}, indent=2))
    return 0
