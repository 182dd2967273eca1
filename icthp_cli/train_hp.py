"""`icthp train-hp`: train the HP reward model (stage 2, ICT frozen).

    icthp train-hp --config train/configs/hp_paper.yaml [key=value ...]
    accelerate launch -m icthp_cli train-hp --config ... [key=value ...]   (several processes / GPUs)

Options are YAML keys, given on the command line as `key=value` (never `--key value`); see docs/training.md.
"""

from __future__ import annotations

import argparse
import json

from icthp_cli.options import add_config_arguments, reject_unknown, training_config

__all__ = ["add_arguments", "reject_unknown", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from icthp_core.training.hp_config import HPConfig

    add_config_arguments(parser, HPConfig)


def run(args: argparse.Namespace) -> int:
    """Train; print the summary as one JSON line on stdout."""
    from icthp_core.training.hp_config import HPConfig

    config = training_config(HPConfig, args)  # a bad value answers here, before torch is imported
    from icthp_core.training.hp import train

    summary = train(config)
    print(json.dumps(summary, default=str))
    return 0
