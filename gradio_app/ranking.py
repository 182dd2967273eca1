"""Ranks, winners and the scoring paradox (a CLIP-family winner that differs from ICT-HP's); the table of
scores and ranks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from icthp_core.scoring.selection import competition_ranks

from .logic import PRIMARY, alignment_baselines, label


def rank(values: Sequence[float]) -> list[int | None]:
    """Competition ranks, 1 = highest score; equal scores share a rank; NaN gets None (the core's one rule,
    `icthp_core.scoring.selection.competition_ranks`)."""
    return competition_ranks(values)


def rank_scores(scores: Mapping[str, Sequence[float]]) -> dict[str, list[int | None]]:
    return {m: rank(s) for m, s in scores.items()}


def winners(values: Sequence[float]) -> list[int]:
    """Indices of the highest (non-NaN) score; several when tied, empty when all are NaN."""
    r = rank(values)
    return [i for i, x in enumerate(r) if x == 1]


@dataclass(frozen=True)
class Paradox:
    """A CLIP-family metric whose winner differs from the ICT-HP winner."""

    metric: str
    metric_winners: tuple[int, ...]
    primary_winners: tuple[int, ...]


def detect_paradox(scores: Mapping[str, Sequence[float]], primary: str = PRIMARY) -> list[Paradox]:
    """CLIP-family metrics (CLIP, PickScore, HPSv2.x) whose winner set is disjoint from ICT-HP's."""
    if primary not in scores:
        return []
    top = winners(scores[primary])
    if not top:
        return []
    out = []
    for m in alignment_baselines():
        if m in scores:
            w = winners(scores[m])
            if w and not set(w) & set(top):
                out.append(Paradox(m, tuple(w), tuple(top)))
    return out


def paradox_markdown(paradoxes: Sequence[Paradox], names: Sequence[str], primary: str = PRIMARY) -> str:
    if not paradoxes:
        return ""

    def who(idx: Sequence[int]) -> str:
        return ", ".join(f"**{names[i]}**" for i in idx)

    lines = [
        "### ⚠️ Scoring paradox",
        f"{label(primary)} picks {who(paradoxes[0].primary_winners)}, but:",
    ]
    lines += [f"- {label(p.metric)} picks {who(p.metric_winners)}" for p in paradoxes]
    lines.append(
        "\nCLIP-family rewards measure text–image alignment; ICT-HP also rewards aesthetic quality "
        "(the paper's point: alignment scores can prefer the plainer image)."
    )
    return "\n".join(lines)


def comparison_table(names: Sequence[str], scores: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    """One row per image: the score and rank for each metric, in the order given."""
    ranks = rank_scores(scores)
    df = pd.DataFrame({"image": list(names)})
    for m, s in scores.items():
        df[label(m)] = [float(x) for x in s]
        df[f"{label(m)} rank"] = pd.array(ranks[m], dtype="Int64")
    return df
