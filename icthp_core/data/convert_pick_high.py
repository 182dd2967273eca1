"""One-time conversion of Pick-High (pickled DataFrames + image folders) to safe JSONL/parquet tables.

    icthp convert-pick-high --trust-pickle PATH/Pick-High-Dataset data/pick-high [--format parquet --embed]

`PATH/Pick-High-Dataset` holds `Pick-High/{train,val,test}.pkl`, `pick_easy_img/` and `pick_refine_img/`.
Unpickling runs code from the file, hence the explicit `--trust-pickle`; the written tables load safely.
"""

from __future__ import annotations

import argparse
import json
import sys

from icthp_core.data.datasets import UnsafeDataError, convert_pick_high


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="the Pick-High dataset folder (with Pick-High/*.pkl and the image folders)")
    ap.add_argument("out", help="output folder for {split}.jsonl|parquet and {split}.report.json")
    ap.add_argument("--splits", default="train,val,test")
    ap.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    ap.add_argument("--embed", action="store_true", help="store the image bytes inside the parquet files")
    ap.add_argument("--trust-pickle", action="store_true", help="required: the .pkl files are unpickled")
    a = ap.parse_args(argv)
    try:
        written = convert_pick_high(
            a.src, a.out, a.splits.split(","), trust_pickle=a.trust_pickle, fmt=a.format, embed_images=a.embed
        )
    except UnsafeDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: str(v) for k, v in written.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
