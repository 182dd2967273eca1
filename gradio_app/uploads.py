"""Upload checks (count, bytes, pixels, decodable) and the folders a server allows the A/B tab to read."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from icthp_core.data.images import check_image as core_check_image
from icthp_core.data.images import display_name

from .logic import IMAGE_EXTS, InputError, public_message


@dataclass(frozen=True)
class UploadLimits:
    min_count: int = 2
    max_count: int = 16
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


def _display_name(path: str | os.PathLike) -> str:
    return Path(path).name


def check_image(path: str | os.PathLike, limits: UploadLimits) -> str | None:
    """Why this file is not an acceptable image (None when it is)."""
    p = Path(path)
    name = p.name
    try:
        size = p.stat().st_size
    except OSError as e:
        return f"{name}: cannot be read ({e.strerror})"
    if size > limits.max_bytes:
        return f"{name}: {size / 2**20:.1f} MiB is over the {limits.max_bytes / 2**20:.0f} MiB limit"
    # the same decode-and-limit check as scoring (icthp_core.data.images), named by the upload's base name only
    why = core_check_image(p, name=display_name(name), max_pixels=limits.max_pixels)
    return None if why is None else public_message(why)


def validate_images(paths: Sequence[str | os.PathLike] | None, limits: UploadLimits) -> tuple[list[Path], list[str]]:
    """Split uploads into accepted images and rejection messages; raise InputError on a bad count."""
    paths = list(paths or [])
    if len(paths) > limits.max_count:
        raise InputError(f"{len(paths)} files uploaded; at most {limits.max_count} images are allowed.")
    ok: list[Path] = []
    rejected: list[str] = []
    for p in paths:
        why = check_image(p, limits)
        if why:
            rejected.append(why)
        else:
            ok.append(Path(p))
    if len(ok) < limits.min_count:
        msg = f"Need at least {limits.min_count} images, got {len(ok)} valid one(s)."
        if rejected:
            msg += " Rejected: " + "; ".join(rejected)
        raise InputError(msg)
    return ok, rejected


def unique_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """File names for display; duplicates get a numeric suffix so each row is distinct."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        n = _display_name(p)
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n} ({k + 1})")
    return out


def resolve_allowed_dir(user_path: str, roots: Sequence[str | os.PathLike]) -> Path:
    """Resolve a folder typed by the user; it must lie under one of the configured roots."""
    if not roots:
        raise InputError("Folder inputs are disabled: start the app with --ab-root DIR to allow folders under DIR.")
    text = (user_path or "").strip()
    if not text:
        raise InputError("No folder given.")
    real_roots = [Path(r).resolve() for r in roots]
    candidates = [Path(text)] if Path(text).is_absolute() else [r / text for r in real_roots]
    for c in candidates:
        real = c.resolve()
        if any(real == r or real.is_relative_to(r) for r in real_roots):
            if real.is_dir():
                return real
            raise InputError(f"Folder not found: {text}")
    raise InputError(f"Folder {text!r} is outside the allowed roots ({', '.join(map(str, real_roots))}).")


def list_folder(folder: Path, root_check: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Image and .txt files directly in `folder`, sorted; links leading outside the roots are skipped."""
    real_roots = [Path(r).resolve() for r in root_check]
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS | {".txt"}:
            continue
        real = p.resolve()
        if real_roots and not any(real.is_relative_to(r) for r in real_roots):
            continue
        out.append(p)
    return out
