"""Runnable script: the same job as `icthp draft` (code: `icthp_core.diffusion.draft_train`).

accelerate launch train/draft_lora.py --config CONFIG.yaml [key=value ...]
"""

import sys

from icthp_cli.main import main

if __name__ == "__main__":
    sys.exit(main(["draft", *sys.argv[1:]]))
