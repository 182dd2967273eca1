"""Decoding user images (paths, PIL, numpy) into RGB PIL images, with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from icthp_core.errors import ImageLoadError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image file as RGB; raise ImageLoadError naming the path on any failure."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{path}: empty file")
        with Image.open(path) as img:
            img.load()  # decode now, so truncated files fail here
            return img.convert("RGB")
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageLoadError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e


def to_pil(image: object, where: str = "image") -> Image.Image:
    """A path, PIL image or numpy HWC array (uint8, or float in 0..1) as an RGB PIL image."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{where}: expected a HxWxC array, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating):
                raise ValueError(f"{where}: expected uint8 or float array, got {arr.dtype}")
            arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        return Image.fromarray(arr[..., :3])
    raise ValueError(f"{where}: unsupported image type {type(image).__name__} (path, PIL image, numpy array or tensor)")


def expand_paths(inputs: list[str | os.PathLike]) -> list[str]:
    """Expand directories into their image files (sorted, non-recursive); keep files as given."""
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        else:
            out.append(os.fspath(item))
    return out
