"""Reference-free image statistics: JPEG compressibility (paper Table 2) and simple collapse signals.

JPEG compressibility is the size of the image encoded by PIL as JPEG at quality 95, in kB (1 kB = 1000 bytes),
as in DDPO's ``jpeg_compressibility`` reward (Black et al. 2023, ``ddpo_pytorch/rewards.py``) that the ICT-HP
paper's Table 2 reports (values ~270-375 for 1024x1024 images; higher = more visual information).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from icthp_core.data.images import to_pil

__all__ = ["JPEG_QUALITY", "jpeg_size_kb", "saturation", "color_histogram", "histogram_distance"]

JPEG_QUALITY = 95


def jpeg_size_kb(image: object, quality: int = JPEG_QUALITY) -> float:
    """Size in kB (1000 bytes) of the RGB image saved by PIL as JPEG at ``quality`` (default 95, paper Table 2)."""
    buf = io.BytesIO()
    to_pil(image).convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.tell() / 1000.0


def _rgb_array(image: object) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    return np.asarray(to_pil(image), dtype=np.float64) / 255.0


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
