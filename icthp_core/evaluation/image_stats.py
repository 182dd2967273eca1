"""Per-image statistics that need no model: JPEG compressibility, and the collapse signals of the DRaFT monitors
(saturation, colour histograms and their drift).

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
from collections.abc import Sequence

import numpy as np
from PIL import Image

from icthp_core.data.images import decode_image, to_pil

__all__ = ["JPEG_QUALITY", "jpeg_size_kb", "saturation", "color_histogram", "histogram_distance"]

JPEG_QUALITY = 95


def _rgb(image: Image.Image | np.ndarray | str | os.PathLike) -> Image.Image:
    if isinstance(image, (str, os.PathLike)):
        return decode_image(image)  # the one decoder: limits, EXIF, alpha on white
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


def _rgb_array(image: object) -> np.ndarray:
    """RGB floats in 0..1, [H, W, 3]."""
    pil = image.convert("RGB") if isinstance(image, Image.Image) else to_pil(image)
    return np.asarray(pil, dtype=np.float64) / 255.0


def saturation(image: object) -> float:
    """Mean HSV saturation in [0, 1] ((max - min) / max per pixel, 0 for black pixels)."""
    arr = _rgb_array(image)
    mx = arr.max(axis=-1)
    mn = arr.min(axis=-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-12), 0.0)
    return float(sat.mean())


def color_histogram(images: Sequence[object], bins: int = 8) -> np.ndarray:
    """Joint RGB histogram (``bins``^3 cells) pooled over ``images``, normalised to sum 1."""
    hist = np.zeros((bins, bins, bins), dtype=np.float64)
    for image in images:
        arr = _rgb_array(image).reshape(-1, 3)
        idx = np.minimum((arr * bins).astype(np.int64), bins - 1)
        np.add.at(hist, (idx[:, 0], idx[:, 1], idx[:, 2]), 1.0)
    total = hist.sum()
    return hist.reshape(-1) / total if total > 0 else hist.reshape(-1)


def histogram_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance 0.5 * sum |p - q| between two normalised histograms (0 = same, 1 = disjoint)."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    if p.shape != q.shape:
        raise ValueError(f"histogram shapes differ: {p.shape} vs {q.shape}")
    return float(0.5 * np.abs(p - q).sum())
