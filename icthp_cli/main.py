"""`icthp`: one command for every job of the toolkit. Each sub-command lives in its own module, imported on use."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from icthp_core import __version__
from icthp_core.errors import ICTHPError


@dataclass(frozen=True)
class Command:
    name: str
    target: str  # "module:function"; the function takes argv (list[str]) and returns an exit code (or None)
    help: str


#: every job, in the order `icthp --help` lists them; a new job adds one line here
COMMANDS: tuple[Command, ...] = (
    Command("score", "icthp_cli.score:main", "score images with ICT, HP, ICT-HP and baselines"),
    Command("serve", "icthp_core.scale.serve_cmd:main", "serve rewards over HTTP on Ray Serve (dynamic batching)"),
    Command("metrics", "icthp_cli.metrics:main", "list the registered metrics with their ranges"),
    Command("download", "icthp_cli.download:main", "download and verify ICT, HP and baseline weights (manifest)"),
    Command("eval", "icthp_cli.eval:main", "preference accuracy (paper Table 1, Pick-a-Pic)"),
    Command("app", "icthp_app.cli:main", "launch the Gradio comparison app"),
    Command("train-ict", "icthp_core.training.ict:main", "train the ICT model (stage 1; accelerate)"),
    Command("train-hp", "icthp_core.training.hp:main", "train the HP model (stage 2; accelerate)"),
    Command("build-labels", "icthp_core.training.build_labels:main", "build ICT labels (eq. 2-8) for triplets"),
    Command("draft", "icthp_core.diffusion.draft_train:main", "DRaFT-K LoRA fine-tuning of SD3/FLUX on a reward"),
    Command("evalgen", "icthp_cli.evalgen:main", "generate a prompt set (base vs LoRAs) and score it (Table 2/3)"),
    Command(
        "convert-pick-high", "icthp_core.data.convert_pick_high:main", "convert Pick-High pickles to JSONL/parquet"
    ),
    Command("toy-data", "icthp_core.testing.synthetic:main", "write a toy preference data set (smoke tests)"),
)
#: errors that are the user's, printed as one line (no traceback)
USER_ERRORS: tuple[type[BaseException], ...] = (ICTHPError, ValueError, OSError)


def usage() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = [
        f"usage: icthp <command> [options]   (icthp {__version__}; icthp <command> --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {c.name.ljust(width)}  {c.help}" for c in COMMANDS]
    return "\n".join(lines)


def resolve(name: str) -> Callable[[list[str]], int | None]:
    """The entry function of command `name`."""
    command = next((c for c in COMMANDS if c.name == name), None)
    if command is None:
        raise KeyError(name)
    module, _, func = command.target.partition(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    try:
        entry = resolve(name)
    except KeyError:
        print(f"icthp: unknown command {name!r}; choose from {', '.join(c.name for c in COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return int(entry(rest) or 0)
    except USER_ERRORS as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"icthp {name}: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"icthp {name}: interrupted", file=sys.stderr)
        return 130
