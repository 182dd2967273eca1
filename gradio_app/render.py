"""HTML for the score cards and A/B pairs (thumbnails inlined as data URIs, text escaped)."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

from PIL import Image

from .logic import PRIMARY, label
from .ranking import rank
from .stored import StoredScores

CSS = """
.icthp-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px}
.icthp-card{border:2px solid #d0d4dc;border-radius:10px;padding:8px;background:#fff;color:#222}
.icthp-card.winner{border:4px solid #f5a700;box-shadow:0 0 10px #f5a70088}
.icthp-card img{width:100%;height:170px;object-fit:contain;background:#f3f4f6;border-radius:6px}
.icthp-name{font-weight:600;font-size:13px;margin:4px 0;word-break:break-all}
.icthp-badge{display:inline-block;background:#f5a700;color:#000;border-radius:6px;padding:1px 6px;
 font-size:12px;font-weight:700}
.icthp-scores{width:100%;font-size:12px;border-collapse:collapse}
.icthp-scores td{padding:1px 2px}.icthp-scores td.v{text-align:right;font-family:monospace}
.icthp-scores tr.top td{font-weight:700;color:#a15c00}
.icthp-stored{font-size:11px;color:#555;border-top:1px dashed #ccc;margin-top:4px;padding-top:2px}
.icthp-pair{display:grid;grid-template-columns:minmax(160px,1fr) 230px 230px;gap:12px;
 border-bottom:1px solid #ddd;padding:8px 0}
.icthp-pair img{width:100%;max-height:170px;object-fit:contain}.icthp-pair .prompt{font-size:13px}
"""


def thumb_uri(image: str | Path | Image.Image, max_side: int = 320) -> str:
    """A small JPEG of the image as a data URI."""
    im = image if isinstance(image, Image.Image) else Image.open(image)
    try:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    finally:
        if not isinstance(image, Image.Image):
            im.close()
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.4f}"


def _attr(m: str) -> str:
    return escape(m, quote=True)


def cards_html(
    names: Sequence[str],
    images: Sequence[str | Path | Image.Image],
    scores: Mapping[str, Sequence[float]],
    primary: str = PRIMARY,
    stored: Sequence[StoredScores | None] | None = None,
) -> str:
    """A card per image: thumbnail, name, score and rank per metric; the primary metric's winner is framed.
    ``stored`` (per image) adds a separate "stored" line with the scores found in the image's metadata."""
    stored = list(stored) if stored is not None else [None] * len(names)
    ranks = {m: rank(v) for m, v in scores.items()}
    key = primary if primary in scores else next(iter(scores))
    cards = []
    for i, (name, img) in enumerate(zip(names, images, strict=True)):
        win = ranks[key][i] == 1
        rows = []
        for m, v in scores.items():
            r = ranks[m][i]
            rows.append(
                f'<tr class="{"top" if r == 1 else ""}" data-metric="{_attr(m)}">'
                f"<td>{escape(label(m))}</td>"
                f'<td class="v icthp-score" data-metric="{_attr(m)}">{fmt(float(v[i]))}</td>'
                f'<td class="v icthp-rank">#{r if r is not None else "–"}</td></tr>'
            )
        badge = f'<span class="icthp-badge">★ {escape(label(key))} winner</span>' if win else ""
        cards.append(
            f'<div class="icthp-card{" winner" if win else ""}" data-name="{escape(name, quote=True)}">'
            f'<img src="{thumb_uri(img)}" alt="{escape(name, quote=True)}"/>'
            f'<div class="icthp-name">{escape(name)}</div>{badge}'
            f'<table class="icthp-scores">{"".join(rows)}</table>{stored_html(stored[i])}</div>'
        )
    return f'<div class="icthp-grid" id="icthp-cards">{"".join(cards)}</div>'


def stored_html(rec: StoredScores | None) -> str:
    """The card's "stored" line: the metadata's scores under their stored labels, with model and sources."""
    if rec is None:
        return ""
    vals = " · ".join(
        f'<span data-metric="{_attr(m)}">{escape(rec.label(m))} {fmt(v)}</span>' for m, v in rec.scores.items()
    )
    about = ", ".join(x for x in (rec.model, rec.sources_text(), rec.normalize and f"normalize={rec.normalize}") if x)
    return (
        f'<div class="icthp-stored" title="scores stored in the image metadata, not computed now">'
        f"<b>stored</b>: {vals}{f' ({escape(about)})' if about else ''}</div>"
    )


def _side(i: int, img: str | Path, mine: Mapping[str, Sequence[float]], other: Mapping[str, Sequence[float]]) -> str:
    lines = []
    for m in mine:
        a, b = float(mine[m][i]), float(other[m][i])
        s = f"{escape(label(m))} {fmt(a)}"
        lines.append(f"<b>{s}</b>" if a > b else s)
    return (
        f'<div class="side"><img src="{thumb_uri(img, 256)}"/>'
        f'<div style="font-size:12px">{escape(Path(img).name)}<br/>{"<br/>".join(lines)}</div></div>'
    )


def pairs_html(
    prompts: Sequence[str],
    a_images: Sequence[str | Path],
    b_images: Sequence[str | Path],
    scores_a: Mapping[str, Sequence[float]],
    scores_b: Mapping[str, Sequence[float]],
    limit: int = 40,
    a_name: str = "A",
    b_name: str = "B",
) -> str:
    """Side-by-side rows (prompt, A, B) with the per-metric scores; the better side's score is bold."""
    n = len(prompts)
    rows = [
        f'<div class="icthp-pair"><div class="prompt"><i>{escape(prompts[i])}</i></div>'
        f"{_side(i, a_images[i], scores_a, scores_b)}{_side(i, b_images[i], scores_b, scores_a)}</div>"
        for i in range(min(n, limit))
    ]
    more = f"<p>… {n - limit} more pair(s) in the CSV.</p>" if n > limit else ""
    head = (
        '<div class="icthp-pair"><div class="prompt"><b>prompt</b></div>'
        f'<div class="side"><b>{escape(a_name)}</b></div>'
        f'<div class="side"><b>{escape(b_name)}</b></div></div>'
    )
    return f'<div id="icthp-pairs">{head}{"".join(rows)}{more}</div>'
