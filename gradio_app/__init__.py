"""Gradio app comparing images and models under ICT, HP, ICT-HP and baseline rewards.

`python -m gradio_app` or `icthp app`; `add_app_arguments(parser)` adds the options to another CLI.
"""

from typing import Any

from .cli import add_app_arguments, main, make_app

__all__ = ["add_app_arguments", "build_app", "main", "make_app"]


def __getattr__(name: str) -> Any:  # build_app imports gradio: only on demand
    if name == "build_app":
        from .app import build_app

        return build_app
    raise AttributeError(name)
