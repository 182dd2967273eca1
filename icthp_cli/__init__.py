"""The `icthp` command line: a thin layer over `icthp_core` and the front ends (it alone knows them all)."""

from icthp_cli.main import COMMANDS, main

__all__ = ["COMMANDS", "main"]
