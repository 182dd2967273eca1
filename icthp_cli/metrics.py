"""`icthp metrics`: the registered metrics with their family, range, default weights and description."""

from __future__ import annotations

import argparse


def table() -> str:
    from icthp_core.scoring.registry import METRICS

    heads = ("metric", "label", "family", "prompt", "range", "default weights", "description")
    rows = [
        (
            s.name,
            s.label,
            s.family,
            "yes" if s.needs_prompt else "no",
            s.value_range,
            s.default_source or ("from " + " x ".join(s.inputs) if s.inputs else "give --source"),
            s.description,
        )
        for s in METRICS.values()
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [heads, *rows]]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def run(args: argparse.Namespace) -> int:
    print(table())
    return 0
