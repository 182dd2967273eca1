"""The explanation methods by name and the error type (light: no torch, so `icthp explain --help` is fast)."""

from __future__ import annotations

from icthp_core.errors import ConfigError

__all__ = ["METHODS", "ExplainError", "parse_methods"]

METHODS = ("words", "occlusion", "relevance")


class ExplainError(ConfigError):
    """An explanation that cannot be made as asked (unknown metric, method not available for a model, ...)."""


def parse_methods(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """A comma-separated method list checked against METHODS."""
    names = [m.strip() for m in text.split(",")] if isinstance(text, str) else list(text)
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise ExplainError(f"methods {', '.join(bad) or '(none)'}: choose from {', '.join(METHODS)}")
    return names
