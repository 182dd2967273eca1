"""Options several jobs share, defined once: the model options (`--ict`, `--hp`, `--source`, `--device`, `--dtype`,
`--batch-size`, `--workers`, `--output/-o`) and the training form `[--config FILE.yaml] [key=value ...]`.

The core holds what they resolve to (`icthp_core.options.ModelOptions`, `icthp_core.training.config.load_config`);
this module only turns a command line into those typed values.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from icthp_core.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DTYPE,
    DTYPES,
    ModelOptions,
    default_weights,
    parse_sources,
)

#: the one spelling of a job's main output
OUTPUT_FLAGS = ("--output", "-o")

#: `--metrics` default of each job family (shown in each job's help)
SCORE_METRICS = "ict,hp,ict_hp"  # score, serve, eval (eval: less those whose weights are 'none')
# evalgen: icthp_core.diffusion.evalgen.DEFAULT_METRICS (the paper's Table 2/3 columns; JPEG kB always)
APP_METRICS = "all"  # app: every registered metric is offered, models load on first use


def add_output_argument(parser: argparse.ArgumentParser | Any, help: str, required: bool = False) -> None:
    """`--output/-o`, the one output flag of every job."""
    parser.add_argument(*OUTPUT_FLAGS, dest="output", required=required, help=help)


def add_model_arguments(
    parser: argparse.ArgumentParser, output_help: str | None = None, workers: bool = True
) -> argparse.ArgumentParser:
    """Add the shared model options to `parser` (one group); `output_help` adds `--output/-o`, `workers=False`
    leaves out `--workers` (jobs that decode no image files themselves)."""
    g = parser.add_argument_group("models")
    for name in ("ict", "hp"):  # the default (None) is the registry's published weights, resolved in model_options
        g.add_argument(
            f"--{name}",
            default=None,
            help=f"{name.upper()} weights: hub id or local dir in the published layout ('none' to skip; default: "
            "the published weights, `icthp download --list`)",
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
    if workers:
        g.add_argument(
            "--workers",
            type=int,
            default=None,
            help="background image-decoding processes, 0 = none (default: from the core count; none on 2 CPU cores)",
        )
    if output_help:
        add_output_argument(g, output_help)
    return parser


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The typed `ModelOptions` of parsed shared options (one-line `ConfigError` for bad values)."""
    return ModelOptions.create(
        sources=parse_sources(default_weights(args.ict, "ict"), default_weights(args.hp, "hp"), args.source),
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        workers=getattr(args, "workers", None),
        output=getattr(args, "output", None),
    )


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """The training form: `[--config FILE.yaml] [key=value ...]`, the keys of `cls` listed in the help."""
    fields = "\n".join(f"  {f.name} ({f.type})" for f in dataclasses.fields(cls))
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = f"options (YAML keys or key=value):\n{fields}"
    parser.add_argument("--config", help="YAML file with the options of " + cls.__name__)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="options overriding the YAML file")


def reject_unknown(extra: list[str]) -> None:
    """A training job's unknown `--key value` arguments: one line showing the key=value form."""
    from icthp_core.errors import ConfigError

    key = extra[0].split("=", 1)[0]
    if key.startswith("--"):
        raise ConfigError(f"argument {extra[0]!r}: options are given as key=value (e.g. {key[2:]}=VALUE), not {key}")
    raise ConfigError(f"unrecognized arguments: {' '.join(extra)}")


def parse_overrides(cls: type, items: list[str]) -> dict[str, Any]:
    """`key=value` items to a dict (values are YAML scalars; a text option keeps its text: `mixed_precision=no`)."""
    import yaml

    from icthp_core.errors import ConfigError

    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for item in items:
        if item.startswith("--"):
            reject_unknown([item])
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        k, v = (s.strip() for s in item.split("=", 1))
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError:
            value = v
        if hints.get(k) in (str, str | None) and v not in ("null", "~", "None"):
            value = v
        values[k] = value
    return values


def cli_config(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None):
    """The `cls` instance of a YAML file and `key=value` overrides (as given on the command line)."""
    from icthp_core.training.config import load_config

    return load_config(cls, path, parse_overrides(cls, overrides or []))


def training_config(cls: type, args: argparse.Namespace):
    """The `cls` instance of a parsed `[--config FILE.yaml] [key=value ...]` command line."""
    return cli_config(cls, args.config, args.overrides)


def config_from_argv(cls: type, argv: list[str]):
    """The `cls` instance of an unparsed `[--config FILE.yaml] [key=value ...]` argument list (scripts, tests)."""
    parser = argparse.ArgumentParser(prog=cls.__name__)
    add_config_arguments(parser, cls)
    args, extra = parser.parse_known_args(argv)
    if extra:
        reject_unknown(extra)
    return training_config(cls, args)


@contextmanager
def user_path(what: str, path: str | os.PathLike | None, write: bool = False) -> Iterator[None]:
    """Turn an `OSError` on a path the user named (`what`: the option) into a one-line `ICTHPError`."""
    from icthp_core.errors import DataError, ICTHPError, OutputError

    try:
        yield
    except ICTHPError:
        raise
    except OSError as e:
        reason = e.strerror or str(e) or type(e).__name__
        raise (OutputError if write else DataError)(f"{what} {path}: {reason}") from None


def add_decode_policy_argument(parser: argparse.ArgumentParser) -> None:
    """`--decode-policy {view,upstream}`, the same option in every job that decodes images for scoring."""
    from icthp_core.data.images import DECODE_POLICIES

    parser.add_argument(
        "--decode-policy",
        choices=DECODE_POLICIES,
        default="view",
        help="view: EXIF orientation, alpha on white (default); upstream: as the reference code, convert('RGB') "
        "without rotation (docs/evaluation.md)",
    )
