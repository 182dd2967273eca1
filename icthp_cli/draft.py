"""`icthp draft`: DRaFT-K / ReFL / DRaFT-LV LoRA fine-tuning of SD3/SD3.5/FLUX.1 on a reward.

    icthp draft --config examples/diffusers/draft_sd35_large_turbo_icthp.yaml [key=value ...]
    accelerate launch -m icthp_cli draft --config ... [key=value ...]   (several processes / GPUs)

Options are YAML keys, given on the command line as `key=value` (never `--key value`); see docs/draft_lora.md.
"""

from __future__ import annotations

import argparse
import json

from icthp_cli.options import add_config_arguments, config_from_argv, reject_unknown, training_config

__all__ = ["add_arguments", "parse_config", "reject_unknown", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from icthp_core.diffusion.draft_config import DraftTrainConfig

    add_config_arguments(parser, DraftTrainConfig)


def parse_config(argv: list[str]):
    """The checked `DraftTrainConfig` of `[--config file.yaml] [key=value ...]`."""
    from icthp_core.diffusion.draft_config import DraftTrainConfig, check_config

    cfg = config_from_argv(DraftTrainConfig, argv)
    check_config(cfg)
    return cfg


def run(args: argparse.Namespace) -> int:
    """Train; print the final LoRA file as one JSON line on stdout."""
    from icthp_core.diffusion.draft_config import DraftTrainConfig, check_config
    from icthp_core.diffusion.draft_train import train

    cfg = training_config(DraftTrainConfig, args)
    check_config(cfg)
    summary = train(cfg)
    print(json.dumps({"lora": str(summary)}, default=str))
    return 0
