"""`icthp`: one command for every job of the toolkit.

Each job is a module of `icthp_cli` with two functions, imported only when that job runs (so `icthp --help` imports
no torch):

- `add_arguments(parser: argparse.ArgumentParser) -> None`: the job's options;
- `run(args: argparse.Namespace) -> int`: calls the core's typed entry points, returns the exit code;
- optionally `reject_unknown(extra: list[str])`: raise an `ICTHPError` explaining unknown arguments (else argparse's
  usage error).

Exit codes: 0 success; 2 a user error (`ICTHPError`, or a bad option), printed as one line; 1 a bug (any other
exception), shown with its traceback; 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import typing
from dataclasses import dataclass
from types import ModuleType


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (`icthp JOB: MESSAGE (icthp JOB --help)`), exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # an icthp_cli module with add_arguments(parser) and run(args) -> int
    help: str


#: every job, in the order `icthp --help` lists them; a new job adds one line here
COMMANDS: tuple[Command, ...] = (
    Command("score", "icthp_cli.score", "score images with ICT, HP, ICT-HP and baselines"),
    Command("serve", "icthp_cli.serve", "serve rewards over HTTP on Ray Serve (dynamic batching)"),
    Command("metrics", "icthp_cli.metrics", "list the registered metrics with their ranges"),
    Command("download", "icthp_cli.download", "download and verify ICT, HP and baseline weights (manifest)"),
    Command("explain", "icthp_cli.explain", "explain scores: word contributions and region heatmaps per image"),
    Command("eval", "icthp_cli.eval", "preference accuracy (paper Table 1, Pick-a-Pic)"),
    Command("app", "icthp_cli.app", "launch the Gradio comparison app"),
    Command("train-ict", "icthp_cli.train_ict", "train the ICT model (stage 1; accelerate)"),
    Command("train-hp", "icthp_cli.train_hp", "train the HP model (stage 2; accelerate)"),
    Command("build-labels", "icthp_cli.build_labels", "build ICT labels (eq. 2-8) for triplets"),
    Command("draft", "icthp_cli.draft", "DRaFT-K LoRA fine-tuning of SD3/FLUX on a reward"),
    Command("evalgen", "icthp_cli.evalgen", "generate a prompt set (base vs LoRAs) and score it (Table 2/3)"),
    Command("convert-pick-high", "icthp_cli.convert_pick_high", "convert Pick-High pickles to JSONL/parquet"),
    Command("toy-data", "icthp_cli.toy_data", "write a toy preference data set (smoke tests)"),
)


def version() -> str:
    """`icthp_core.__version__`, from the installed package metadata (no torch import)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("icthp")
    except PackageNotFoundError:  # a checkout on sys.path without an install
        return "unknown"


def usage() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = [
        f"usage: icthp <command> [options]   (icthp {version()}; icthp <command> --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {c.name.ljust(width)}  {c.help}" for c in COMMANDS]
    return "\n".join(lines)


def find(name: str) -> Command:
    command = next((c for c in COMMANDS if c.name == name), None)
    if command is None:
        raise KeyError(name)
    return command


def load(name: str) -> ModuleType:
    """The module of job `name` (it has `add_arguments` and `run`)."""
    return importlib.import_module(find(name).module)


def build_parser(name: str) -> tuple[argparse.ArgumentParser, ModuleType]:
    """The parser of job `name`, with `prog="icthp NAME"`, and the job's module."""
    command = find(name)
    module = load(name)
    parser = Parser(prog=f"icthp {name}", description=module.__doc__ or command.help)
    module.add_arguments(parser)
    return parser, module


def run_job(name: str, argv: list[str]) -> int:
    """Parse `argv` for job `name` and run it under the error contract (user error: one line and 2)."""
    from icthp_core.errors import ICTHPError

    parser, module = build_parser(name)
    reject = getattr(module, "reject_unknown", None)  # a job may explain unknown arguments itself (key=value jobs)
    args, extra = parser.parse_known_args(argv) if reject else (parser.parse_args(argv), [])
    try:
        if extra:
            reject(extra)
        return int(module.run(args) or 0)
    except ICTHPError as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"icthp {name}: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"icthp {name}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    """`icthp ARGV`: the exit code (a closed pipe, as in `icthp score ... | head`, ends quietly)."""
    try:
        return dispatch(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141


def dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(version())
        return 0
    name, rest = argv[0], argv[1:]
    try:
        find(name)
    except KeyError:
        print(f"icthp: unknown command {name!r}; choose from {', '.join(c.name for c in COMMANDS)}", file=sys.stderr)
        return 2
    return run_job(name, rest)
