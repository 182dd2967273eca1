"""Per-image statistics that need no model.

JPEG compressibility (paper Table 2, "JPEG Compressibility ↑", values ~270-375 for 1024² images) is the size of the
image encoded as JPEG, in kB (1 kB = 1000 bytes), exactly as DDPO (Black et al. 2023, "Training Diffusion Models with
Reinforcement Learning") computes it in `ddpo_pytorch/rewards.py::jpeg_incompressibility`: the 8-bit RGB image is
saved with Pillow, `image.save(buffer, format="JPEG", quality=95)` (Pillow's other defaults: 4:2:0 chroma
subsampling, no `optimize`, baseline), and the byte count is divided by 1000. A larger file means more visual
information (detail, texture, noise); DDPO's "compressibility" reward is the negative of this number.
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

__all__ = ["JPEG_QUALITY", "jpeg_size_kb"]

JPEG_QUALITY = 95


def _rgb(image: Image.Image | np.ndarray | str | os.PathLike) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image: expected a uint8 [H, W, 3] array, got {image.dtype} {list(image.shape)}")
        return Image.fromarray(image)
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    raise TypeError(f"image: expected a PIL image, a uint8 array or a path, got {type(image).__name__}")


def jpeg_size_kb(image: Image.Image | np.ndarray | str | os.PathLike, quality: int = JPEG_QUALITY) -> float:
    """Size in kB (bytes / 1000) of `image` as an RGB JPEG at Pillow `quality` (95: DDPO's and Table 2's setting)."""
    buf = io.BytesIO()
    _rgb(image).save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000.0
