"""Runnable script (as diffusers' examples): the same job as `icthp train-ict`, whose code is `icthp_core.training.ict`.

accelerate launch train/train_ict.py --config CONFIG.yaml [key=value ...]
"""

import sys

from icthp_cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train-ict", *sys.argv[1:]]))
