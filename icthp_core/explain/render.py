"""Heatmap overlays and word bars drawn with PIL (no plotting library needed)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

#: control points of the heat colour map (dark blue -> cyan -> yellow -> red), positions 0..1
_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_COLOURS = np.array([[20, 20, 120], [0, 200, 220], [250, 220, 0], [220, 20, 20]], dtype=np.float32)


def normalise(heat: torch.Tensor | np.ndarray) -> np.ndarray:
    """Positive evidence scaled to 0..1 (negative values, which lower the score, show as 0)."""
    h = np.asarray(heat.detach().cpu() if isinstance(heat, torch.Tensor) else heat, dtype=np.float32)
    h = np.clip(h, 0, None)
    top = float(h.max()) if h.size else 0.0
    return h / top if top > 0 else np.zeros_like(h)


def colourise(values01: np.ndarray) -> np.ndarray:
    """RGB uint8 [H,W,3] of values in 0..1 through the heat colour map."""
    out = np.stack([np.interp(values01, _STOPS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    return out.astype(np.uint8)


def overlay(image: Image.Image, heat, alpha: float = 0.55) -> Image.Image:
    """`image` with `heat` (any [h,w] map, resized to the image) blended on, strongest where the heat is highest."""
    base = image.convert("RGB")
    h = normalise(heat)
    heat_img = Image.fromarray((h * 255).astype(np.uint8)).resize(base.size, Image.Resampling.BILINEAR)
    h01 = np.asarray(heat_img, dtype=np.float32)[..., None] / 255.0
    colour = colourise(h01[..., 0]).astype(np.float32)
    weight = alpha * (0.25 + 0.75 * h01)
    out = np.asarray(base, dtype=np.float32) * (1 - weight) + colour * weight
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def word_bars(words: list[dict], key: str = "removal_drop", width: int = 480, row: int = 22) -> Image.Image:
    """A bar chart of per-word values (green: raises the score, red: lowers it) as a PIL image."""
    vals = [w.get(key) or 0.0 for w in words]
    top = max((abs(v) for v in vals), default=0.0) or 1.0
    img = Image.new("RGB", (width, row * max(len(words), 1) + 8), (255, 255, 255))
    d = ImageDraw.Draw(img)
    mid = width // 2 + 40
    for k, (w, v) in enumerate(zip(words, vals, strict=True)):
        y = 4 + k * row
        d.text((4, y + 4), str(w["word"])[:18], fill=(0, 0, 0))
        span = int((width - mid - 60) * abs(v) / top)
        x0, x1 = (mid, mid + span) if v >= 0 else (mid - span, mid)
        d.rectangle((x0, y + 3, x1, y + row - 4), fill=(40, 160, 60) if v >= 0 else (200, 50, 40))
        d.text((width - 56, y + 4), f"{v:+.4f}", fill=(0, 0, 0))
    return img
