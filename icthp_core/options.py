"""The model options every command shares (`--ict`, `--hp`, `--source`, `--device`, `--dtype`, `--batch-size`,
`--workers`, `--output`): defined once, with the same names and defaults in `score`, `eval` and `app`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from icthp_core.dtypes import DEFAULT_DTYPE, DTYPE_CHOICES
from icthp_core.scoring.registry import METRICS, get_metric

DTYPES = DTYPE_CHOICES
DEFAULT_BATCH_SIZE = 32
DEFAULT_WORKERS = None  # sized from the core count (icthp_core.scoring.gpu_preprocess.default_workers)


@dataclass
class ModelOptions:
    """What the shared options resolve to: weight sources per base metric, device, dtype and batching."""

    sources: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    dtype: str = DEFAULT_DTYPE
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int | None = DEFAULT_WORKERS
    output: str | None = None

    def decode_workers(self, device: str | None = None, decode: str = "cpu") -> int:
        """`workers`, or (when not given) a count sized from the cores for `device` and the decode path."""
        if self.workers is not None:
            return self.workers
        from icthp_core.checkpoints.loading import parse_device
        from icthp_core.scoring.gpu_preprocess import default_workers

        return default_workers(parse_device(device if device is not None else self.device), decode)


def add_model_arguments(parser: argparse.ArgumentParser, output_help: str | None = None) -> argparse.ArgumentParser:
    """Add the shared model options to `parser` (one group); `output_help` adds `--output/-o` too."""
    g = parser.add_argument_group("models")
    g.add_argument(
        "--ict",
        default=get_metric("ict").default_source,
        help="ICT weights: hub id or local dir in the published layout ('none' to skip)",
    )
    g.add_argument(
        "--hp",
        default=get_metric("hp").default_source,
        help="HP weights: hub id or local dir in the published layout ('none' to skip)",
    )
    g.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="METRIC=SRC",
        help="weights of another metric, e.g. pickscore=/models/PickScore_v1 (repeatable)",
    )
    g.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    g.add_argument("--dtype", default=DEFAULT_DTYPE, choices=DTYPES, help=f"weights and activations ({DEFAULT_DTYPE})")
    g.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"images per batch ({DEFAULT_BATCH_SIZE})"
    )
    g.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="background image-decoding processes, 0 = none (default: from the core count; none on 2 CPU cores)",
    )
    if output_help:
        g.add_argument("--output", "-o", help=output_help)
    return parser


def parse_sources(ict: str | None, hp: str | None, items: list[str]) -> dict[str, str]:
    """Sources by base metric from `--ict`, `--hp` and repeated `--source METRIC=SRC` (checked against the registry)."""
    sources: dict[str, str] = {}
    for name, value in (("ict", ict), ("hp", hp)):
        if value is not None and value.strip().lower() != "none":
            sources[name] = value.strip()
    for item in items:
        name, sep, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not value:
            raise ValueError(f"--source {item!r}: expected METRIC=SRC")
        spec = METRICS.get(name)
        if spec is None or spec.derived:
            bases = [n for n, s in METRICS.items() if not s.derived]
            raise ValueError(
                f"--source {item!r}: {name!r} is not a metric with weights; choose from {', '.join(bases)}"
            )
        sources[name] = value
    return sources


def model_options(args: argparse.Namespace) -> ModelOptions:
    """Resolve the parsed shared options (after `add_model_arguments`) with one-line errors for bad values."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers {args.workers}: must be >= 0")
    return ModelOptions(
        sources=parse_sources(args.ict, args.hp, args.source),
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        workers=args.workers,
        output=getattr(args, "output", None),
    )
