"""Safe reading and writing of state dicts (safetensors, or torch.load with weights_only=True)."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from icthp_core.errors import CheckpointError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def load_state_dict(
    path: str | Path, nested_key: str | None = None, keep: Callable[[str], bool] | None = None
) -> dict[str, torch.Tensor]:
    """Load a flat tensor dict from `.safetensors` or a torch file (never running pickled code).

    `nested_key`: for torch files holding `{nested_key: state_dict, ...}` (e.g. HPSv2's `state_dict`).
    `keep`: load only keys it accepts (safetensors reads nothing else; torch files are memory-mapped).
    Raises `CheckpointError` naming the file when it is missing, truncated, or not a tensor dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as fh:
                sd = {k: fh.get_tensor(k) for k in fh.keys() if keep is None or keep(k)}
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except (
        SafetensorError,
        RuntimeError,
        EOFError,
        OSError,
        pickle.UnpicklingError,
        ValueError,
        IndexError,  # a truncated torch zip can fail inside its reader
        KeyError,
        zipfile.BadZipFile,
    ) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e
    if nested_key is not None and isinstance(sd, Mapping) and nested_key in sd:
        sd = sd[nested_key]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
    return {str(k): v for k, v in sd.items() if keep is None or keep(str(k))}


def check_finite(sd: Mapping[str, torch.Tensor], file: str | Path) -> None:
    """Raise CheckpointError naming `file` and the first keys whose floating-point values are NaN or infinite."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(sorted(bad)[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
        raise CheckpointError(f"{file}: NaN or infinite values in {shown}")


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


def save_state_dict(sd: Mapping[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save as safetensors (by suffix) or a torch zip file; tensors are made contiguous CPU copies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    if path.suffix == ".safetensors":
        save_file(flat, str(path), metadata=metadata)
    else:
        torch.save(flat, path)


def find_weights(directory: Path, names: tuple[str, ...]) -> Path | None:
    """First existing file among `names` in `directory`."""
    for name in names:
        if (directory / name).is_file():
            return directory / name
    return None
