"""Gradio app comparing images and models under ICT, HP, ICT-HP and baseline rewards.

Started by `icthp app` (its options: `icthp app --help`); from Python: `make_app(AppConfig(...))`.
"""

from typing import Any

from .launcher import AppConfig, launch_app, make_app, offered_metrics

__all__ = ["AppConfig", "build_app", "launch_app", "make_app", "offered_metrics"]


def __getattr__(name: str) -> Any:  # build_app imports gradio: only on demand
    if name == "build_app":
        from .app import build_app

        return build_app
    raise AttributeError(name)
