"""Scores that travel with the image: a JSON record in a PNG text chunk, and an optional score banner.

The record (text chunk ``icthp_scores``)::

    {"format": 1, "prompt": "...", "model": "ICT-HP",
     "scores": {"ict_hp": 0.71, "ict": 0.93, "hp": 0.76},
     "metrics": {"ict_hp": {"label": "ICT-HP", "range": "(-1, 1)"}, ...},
     "sources": {"ict": "8y/ICT", "hp": "8y/HP"}, "normalize": null}

Scores are absolute values of the published models (not batch-relative) unless ``normalize`` says otherwise
(a weighted mix z-normalised within its batch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, PngImagePlugin

from icthp_core.errors import DataError

KEY = "icthp_scores"
FORMAT = 1


def build_record(
    scores: dict[str, float],
    prompt: str | None,
    model: str,
    sources: dict[str, str] | None = None,
    normalize: str | None = None,
) -> dict[str, Any]:
    """The metadata record of one image; metric labels and ranges come from the core registry."""
    from icthp_core.scoring.registry import METRICS

    metrics = {m: {"label": METRICS[m].label, "range": METRICS[m].value_range} for m in scores if m in METRICS}
    return {
        "format": FORMAT,
        "prompt": prompt,
        "model": model,
        "scores": {m: float(v) for m, v in scores.items()},
        "metrics": metrics,
        "sources": dict(sources or {}),
        "normalize": normalize,
    }


def png_info(record: dict[str, Any], extra: dict[str, str] | None = None) -> PngImagePlugin.PngInfo:
    """A PngInfo carrying ``record`` (plus ``extra`` text chunks such as ComfyUI's workflow)."""
    info = PngImagePlugin.PngInfo()
    for k, v in (extra or {}).items():
        info.add_text(k, v)
    info.add_text(KEY, json.dumps(record, sort_keys=True))
    return info


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record of a PNG written by ``png_info`` (None when the image has none).

    Raises ``ValueError`` naming the file when the chunk is not valid JSON (no code is ever evaluated)."""
    with Image.open(path) as im:
        text = (getattr(im, "text", None) or im.info).get(KEY)
    if text is None:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: the {KEY} metadata is not valid JSON ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("scores"), dict):
        raise DataError(f"{path}: the {KEY} metadata has no 'scores' object")
    return record


def banner_text(scores: dict[str, float], metrics: list[str]) -> str:
    from icthp_core.scoring.registry import METRICS

    def label(m: str) -> str:
        return METRICS[m].label if m in METRICS else m

    return "  ".join(f"{label(m)} {scores[m]:.3f}" for m in metrics if m in scores)


def draw_banner(image: Image.Image, text: str) -> Image.Image:
    """A copy of ``image`` with a small dark banner holding ``text`` along its bottom edge."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    left, top, right, bottom = draw.textbbox((0, 0), text)
    h = min(out.height, bottom - top + 6)
    draw.rectangle((0, out.height - h, out.width, out.height), fill=(0, 0, 0))
    draw.text((3, out.height - h + 2 - top), text, fill=(255, 255, 255))
    return out


def save_png(image: Image.Image, path: str | Path, record: dict[str, Any], extra: dict[str, str] | None = None):
    image.save(path, pnginfo=png_info(record, extra), compress_level=4)
