"""Validation of a training config at load time, and the comparison of a resumed run's config with its checkpoint's.

Every option is checked before any model is built: types (by `load_config`), fixed choices (``CHOICES``), numeric
ranges (``RANGES``, e.g. ``max_steps >= 1``, ``lr > 0``), finite floats, and cross-option rules (``best_metric``
must be a metric the validation reports, and needs ``val_data``). A failure is one :class:`ConfigError` line naming
the option.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
from pathlib import Path
from typing import Any

from icthp_core.training.config import ConfigError

__all__ = ["RESUME_IGNORED", "check_config", "config_changes", "format_changes", "saved_config"]

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}

#: options that may differ between a run and the checkpoint it resumes from without `allow_config_change`
#: (they change what is logged or how, not what is trained)
RESUME_IGNORED = frozenset(
    {
        "resume",
        "allow_config_change",
        "debug_crash_at_step",
        "log_every",
        "report_to",
        "plot",
        "num_workers",
        "eval_batch_size",
        "checkpoints_total_limit",
        "verify_images",
        "cache_images",
    }
)

#: file written into every checkpoint directory: the options of the run that wrote it
CONFIG_FILE = "training_config.json"


def _in_range(value: float, spec: str) -> bool:
    """``spec`` like ``">=1"`` or ``">=0,<1"``."""
    for part in spec.split(","):
        op = part[:2] if part[:2] in _OPS else part[:1]
        if not _OPS[op](value, float(part[len(op) :])):
            return False
    return True


def _ranges(cls: type) -> dict[str, str]:
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        out.update(klass.__dict__.get("RANGES", {}))
    return out


def check_config(cfg: Any, where: str = "config", complete: bool = False) -> None:
    """Raise :class:`ConfigError` for the first option out of range, non-finite, or inconsistent with another.

    ``complete``: the config is the one about to train (not a file to be completed on the command line), so options
    needing another (``best_metric`` needs ``val_data``) are checked too."""
    choices: dict[str, tuple[str, ...]] = getattr(cfg, "CHOICES", None) or {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{where}: option {f.name}={v}: must be a finite number")
        if f.name in choices and v is not None and v not in choices[f.name]:
            raise ConfigError(f"{where}: option {f.name}={v!r}: expected one of {', '.join(choices[f.name])}")
    for name, spec in _ranges(type(cfg)).items():
        v = getattr(cfg, name, None)
        if isinstance(v, int | float) and not isinstance(v, bool) and not _in_range(v, spec):
            raise ConfigError(f"{where}: option {name}={v}: must be {spec.replace(',', ' and ')}")
    metric = getattr(cfg, "best_metric", None)
    if metric:
        valid = getattr(cfg, "VALIDATION_METRICS", ())
        if valid and metric not in valid:
            raise ConfigError(f"{where}: option best_metric={metric!r}: validation reports {', '.join(valid)}")
        if complete and not getattr(cfg, "val_data", None):
            raise ConfigError(f"{where}: option best_metric={metric!r} needs val_data (a validation table)")


def saved_config(checkpoint: Path, fallback: Path | None = None) -> dict[str, Any] | None:
    """The options stored with ``checkpoint`` (or in ``fallback``, the run's config file of older versions)."""
    for p in (checkpoint / CONFIG_FILE, fallback):
        if p is not None and p.is_file():
            try:
                return json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
    return None


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{option: (checkpoint value, new value)}`` for options that differ (ignoring :data:`RESUME_IGNORED`)."""
    keys = (set(old) | set(new)) - RESUME_IGNORED
    return {
        k: (old.get(k), new.get(k)) for k in sorted(keys) if k in old and k in new and _norm(old[k]) != _norm(new[k])
    }


def format_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
