"""Resumable checkpoints shared by every training job (reward stages and DRaFT).

Layout: ``<output_dir>/checkpoints/step_<N>/``. A checkpoint is usable only once its ``COMPLETE`` marker exists
(written last, after every file of the checkpoint, by the main process), so a run killed while saving never
resumes from a half-written directory. ``resume: auto`` picks the newest complete checkpoint; older ones beyond
``checkpoints_total_limit`` are removed (rotation). The best-validation model is tracked by :class:`BestTracker`.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from icthp_core.errors import ConfigError, MissingFileError

__all__ = [
    "COMPLETE_MARKER",
    "checkpoint_dir",
    "list_checkpoints",
    "latest_checkpoint",
    "resolve_resume",
    "resume_candidates",
    "mark_complete",
    "rotate",
    "write_checkpoint",
    "BestTracker",
    "best_step",
]

COMPLETE_MARKER = "COMPLETE"


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step}"


def _step_of(p: Path) -> int | None:
    tail = p.name.removeprefix("step_")
    return int(tail) if p.name.startswith("step_") and tail.isdigit() else None


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (incomplete or foreign directories are ignored)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _step_of(p) is not None and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: _step_of(p))


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: `auto` = newest complete one (None on a fresh run), a path, or None."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    p = Path(resume)
    if not (p / COMPLETE_MARKER).is_file():
        raise MissingFileError(f"resume={resume}: not a complete checkpoint directory (no {COMPLETE_MARKER})")
    return p


def resume_candidates(resume: str | None, output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints to try, newest first: `auto` = every complete one (the next is used when one is torn), a
    given directory alone, or none (`resume` null, or a fresh run)."""
    if not resume:
        return []
    if resume == "auto":
        return list_checkpoints(output_dir)[::-1]
    return [resolve_resume(resume, output_dir)]


def mark_complete(directory: str | os.PathLike, step: int) -> None:
    (Path(directory) / COMPLETE_MARKER).write_text(str(step))


def rotate(output_dir: str | os.PathLike, keep: int | None) -> None:
    """Remove the oldest complete checkpoints so that `keep` remain (None or 0: keep all)."""
    if keep:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def write_checkpoint(
    output_dir: str | os.PathLike, step: int, write: Callable[[Path], None], keep: int | None = None
) -> Path:
    """Single-writer checkpoint: `write(dir)` fills a fresh directory, then it is marked complete and rotated."""
    d = checkpoint_dir(output_dir, step)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    write(d)
    mark_complete(d, step)
    rotate(output_dir, keep)
    return d


def best_step(history: Sequence[tuple[int, float]], mode: str = "max") -> tuple[int, float] | None:
    """(step, value) of the best validation value; the earliest step wins ties; NaNs are skipped."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    best: tuple[int, float] | None = None
    for step, value in history:
        if value is None or math.isnan(value):
            continue
        if best is None or (value > best[1] if mode == "max" else value < best[1]):
            best = (int(step), float(value))
    return best


class BestTracker:
    """The best validation value seen so far (saved with every checkpoint, so a resumed run keeps it)."""

    def __init__(self, metric: str | None, mode: str = "max"):
        if mode not in ("max", "min"):
            raise ConfigError(f"best_mode must be 'max' or 'min', got {mode!r}")
        self.metric, self.mode = metric, mode
        self.step: int | None = None
        self.value: float | None = None

    def update(self, step: int, values: dict[str, float]) -> bool:
        """Record `values` of `step`; True when the tracked metric improved (a new best model)."""
        if not self.metric:
            return False
        if self.metric not in values:
            raise ConfigError(f"best_metric={self.metric!r}: validation reports {sorted(values)}")
        v = float(values[self.metric])
        if math.isnan(v):
            return False
        if self.value is None or (v > self.value if self.mode == "max" else v < self.value):
            self.step, self.value = int(step), v
            return True
        return False

    def state_dict(self) -> dict:
        return {"metric": self.metric, "mode": self.mode, "step": self.step, "value": self.value}

    def load_state_dict(self, sd: dict) -> None:
        self.step, self.value = sd.get("step"), sd.get("value")
