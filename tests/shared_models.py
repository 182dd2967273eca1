"""Session values built once and shared by fixtures and the early server starts (`warm_servers.py`), which run in
hooks where no fixture can be requested: the root tiny ICT / HP, the app's and ComfyUI's model folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_VALUES: dict[str, Any] = {}


def once(key: str, build: Callable[[], Any]) -> Any:
    """`build()` the first time `key` is asked for in this session, the stored value afterwards."""
    if key not in _VALUES:
        _VALUES[key] = build()
    return _VALUES[key]


def tmp_factory(config: pytest.Config) -> pytest.TempPathFactory:
    """The session's `tmp_path_factory` (the fixture returns this same object), for use outside fixtures."""
    return config._tmp_path_factory  # noqa: SLF001


def tiny_ict(config: pytest.Config) -> Path:
    """The session's tiny ICT (the root `tiny_ict` fixture)."""
    from icthp_core.testing.tiny import save_tiny_ict

    return once("tiny_ict", lambda: save_tiny_ict(tmp_factory(config).mktemp("models") / "ICT", seed=0))


def tiny_hp(config: pytest.Config) -> Path:
    """The session's tiny HP (the root `tiny_hp` fixture)."""
    from icthp_core.testing.tiny import save_tiny_hp

    return once("tiny_hp", lambda: save_tiny_hp(tmp_factory(config).mktemp("models") / "HP", seed=1))
