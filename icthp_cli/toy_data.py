"""`icthp toy-data`: a toy preference data set for smoke tests and tutorials (coloured shapes; quality =
brightness and sharpness): `OUTPUT/triplets.jsonl` (with ICT labels), `OUTPUT/pairs.jsonl` and the PNGs.

    icthp toy-data -o data/toy --triplets 64 --pairs 64
"""

from __future__ import annotations

import argparse
import json

from icthp_cli.options import add_output_argument, user_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_output_argument(p, "output folder (created)", required=True)
    p.add_argument("--triplets", type=int, default=64, help="triplets written (64)")
    p.add_argument("--pairs", type=int, default=64, help="pairs written (64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (64)")
    p.add_argument(
        "--models",
        action="store_true",
        help="also write tiny RANDOM models (ICT, HP, SD3) and print a command to try each job (scores meaningless)",
    )


def run(args: argparse.Namespace) -> int:
    """Print {"triplets": path, "pairs": path} as one JSON line."""
    from icthp_core.errors import ConfigError

    for name in ("triplets", "pairs"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name} {getattr(args, name)}: must be >= 0")
    if args.size < 8:
        raise ConfigError(f"--size {args.size}: must be >= 8")
    from icthp_core.testing.synthetic import make_dataset

    with user_path("--output", args.output, write=True):
        paths = make_dataset(args.output, args.triplets, args.pairs, args.seed, args.size)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    if args.models:
        from icthp_core.testing.toy import describe, write_toy_models

        with user_path("--output", args.output, write=True):
            write_toy_models(args.output)
        print(describe(args.output))
    return 0
