"""`icthp draft`: DRaFT-K / ReFL / DRaFT-LV LoRA fine-tuning of SD3/SD3.5/FLUX.1 on a reward.

    icthp draft --config examples/diffusers/draft_sd35_large_turbo_icthp.yaml [key=value ...]
    accelerate launch -m icthp_cli draft --config ... [key=value ...]   (several processes / GPUs)

Options are YAML keys, given on the command line as `key=value` (never `--key value`); see docs/draft_lora.md.
"""

from __future__ import annotations

import argparse
import json

from icthp_cli.options import add_config_arguments, reject_unknown, training_config

__all__ = ["add_arguments", "reject_unknown", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from icthp_core.diffusion.draft_train import DraftTrainConfig

    add_config_arguments(parser, DraftTrainConfig)


def run(args: argparse.Namespace) -> int:
    """Train; print the summary as one JSON line on stdout."""
    from icthp_core.diffusion.draft_train import DraftTrainConfig, train

    summary = train(training_config(DraftTrainConfig, args))
    print(json.dumps({"lora": str(summary)}, default=str))
    return 0
