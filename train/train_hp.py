"""Runnable script (as diffusers' examples): the same job as `icthp train-hp`, whose code is `icthp_core.training.hp`.

accelerate launch train/train_hp.py --config CONFIG.yaml [key=value ...]
"""

import sys

from icthp_cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train-hp", *sys.argv[1:]]))
