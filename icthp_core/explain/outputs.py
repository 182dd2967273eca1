"""Explanations as files and pictures: overlay PNGs, word bars and one JSON per image."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from icthp_core.errors import OutputError
from icthp_core.explain.api import Explanation
from icthp_core.explain.render import overlay, word_bars


def image_of(ex: Explanation) -> Image.Image:
    """The working copy of the explained image as PIL."""
    arr = (ex.image[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def overlays(ex: Explanation) -> dict[tuple[str, str], Image.Image]:
    """(metric, method) -> the image with that heatmap blended on."""
    base = image_of(ex)
    return {(m, k): overlay(base, heat) for m, maps in ex.heatmaps.items() for k, heat in maps.items()}


def safe_name(text: str) -> str:
    """`text` usable in a file name (metric names such as hpsv2.1 keep their dot)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def save_explanation(ex: Explanation, out_dir: str | os.PathLike, stem: str, source: str | None = None) -> Path:
    """Write `<stem>.<metric>.<method>.png` overlays, `<stem>.<metric>.words.png` bars and `<stem>.json` into
    `out_dir`; returns the JSON path (it lists the files it wrote)."""
    out = Path(out_dir)
    stem = safe_name(stem)
    files: dict[str, str] = {}
    try:
        for (m, k), img in overlays(ex).items():
            name = f"{stem}.{safe_name(m)}.{k}.png"
            img.save(out / name)
            files[f"{m}/{k}"] = name
        for m, table in ex.words.items():
            name = f"{stem}.{safe_name(m)}.words.png"
            word_bars(table["words"]).save(out / name)
            files[f"{m}/words"] = name
        record = {"image": source, **ex.to_json(), "files": files}
        path = out / f"{stem}.json"
        path.write_text(json.dumps(record, indent=1))
    except OSError as e:
        raise OutputError(f"{out}: cannot write the explanation of {source or stem} ({e.strerror or e})") from None
    return path
