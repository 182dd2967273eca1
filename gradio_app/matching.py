"""A/B matching: pair two models' images by prompt (index file, sidecar `.txt` prompts or file names) and
the win-rate table."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icthp_core.evaluation.stats import win_rate

from .logic import MAX_PROMPT_FILE_BYTES, InputError, label


@dataclass(frozen=True)
class IndexEntry:
    prompt: str
    a: str
    b: str


def _norm_cols(cols: Sequence[str]) -> dict[str, str]:
    return {c.strip().lower(): c for c in cols}


def _entry(row: Mapping[str, object], where: str) -> IndexEntry:
    keys = {str(k).strip().lower(): v for k, v in row.items()}
    prompt = keys.get("prompt")
    if prompt is None or str(prompt).strip() == "":
        raise InputError(f"{where}: missing 'prompt'")
    file = keys.get("file") or keys.get("image") or keys.get("filename")
    a = keys.get("a") or file
    b = keys.get("b") or file
    if not a or not b:
        raise InputError(f"{where}: needs a 'file' column/key (or both 'a' and 'b')")
    return IndexEntry(str(prompt), Path(str(a).strip()).name, Path(str(b).strip()).name)


def read_index(path: str | os.PathLike) -> list[IndexEntry]:
    """Read an index file mapping prompt → file name.

    CSV with a header: `prompt,file` (same name in A and B) or `prompt,a,b`.
    JSON: `{"prompt": "file.png", ...}`, `{"prompt": {"a": ..., "b": ...}}`, or a list of objects
    with the CSV column names. Only base names are used: files are looked up among the A/B sets.
    """
    p = Path(path)
    name = p.name
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".tsv", ".json"):
        raise InputError(f"{name}: index must be .csv, .tsv or .json")
    if p.stat().st_size > 8 * 1024 * 1024:
        raise InputError(f"{name}: index file is larger than 8 MiB")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{name}: index file is not UTF-8 text") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{name}: invalid JSON ({e})") from None
        if isinstance(data, dict):
            rows = [{"prompt": k, **v} if isinstance(v, dict) else {"prompt": k, "file": v} for k, v in data.items()]
        elif isinstance(data, list) and all(isinstance(r, dict) for r in data):
            rows = data
        else:
            raise InputError(f"{name}: JSON index must be an object or a list of objects")
        return [_entry(r, f"{name} entry {i + 1}") for i, r in enumerate(rows)]
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
    cols = _norm_cols(reader.fieldnames or [])
    if "prompt" not in cols:
        raise InputError(f"{name}: CSV needs a header with a 'prompt' column, got {reader.fieldnames}")
    return [_entry(r, f"{name} line {i + 2}") for i, r in enumerate(reader)]


@dataclass(frozen=True)
class Pair:
    prompt: str
    key: str
    a: Path
    b: Path


@dataclass
class MatchResult:
    pairs: list[Pair]
    unmatched_a: list[str] = field(default_factory=list)
    unmatched_b: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.pairs)} pair(s) matched."]
        if self.unmatched_a:
            parts.append(f"Only in A ({len(self.unmatched_a)}): {_short(self.unmatched_a)}.")
        if self.unmatched_b:
            parts.append(f"Only in B ({len(self.unmatched_b)}): {_short(self.unmatched_b)}.")
        parts += self.problems
        return " ".join(parts)


def _short(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (f" … (+{len(items) - n})" if len(items) > n else "")


def _split(files: Sequence[str | os.PathLike], side: str) -> tuple[dict[str, Path], dict[str, Path], dict[str, Path]]:
    """(images by name, images by stem, .txt sidecars by stem); duplicate names are an error."""
    by_name: dict[str, Path] = {}
    by_stem: dict[str, Path] = {}
    txt: dict[str, Path] = {}
    for f in files:
        p = Path(f)
        if p.suffix.lower() == ".txt":
            txt[p.stem] = p
            continue
        if p.name in by_name:
            raise InputError(f"Set {side} has two files named {p.name}")
        if p.stem in by_stem:
            raise InputError(f"Set {side} has two images with the stem {p.stem!r} ({by_stem[p.stem].name}, {p.name})")
        by_name[p.name] = p
        by_stem[p.stem] = p
    return by_name, by_stem, txt


def _read_sidecar(p: Path) -> str:
    if p.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise InputError(f"{p.name}: prompt file larger than {MAX_PROMPT_FILE_BYTES // 1024} KiB")
    return p.read_text(encoding="utf-8", errors="replace").strip()


def match_pairs(
    a_files: Sequence[str | os.PathLike],
    b_files: Sequence[str | os.PathLike],
    index: Sequence[IndexEntry] | None = None,
    default_prompt: str | None = None,
) -> MatchResult:
    """Pair generations of model A and model B.

    With an index: one pair per entry, files looked up by name (or stem) in each set.
    Without: images with the same stem (`001.png` ↔ `001.jpg`) are paired; the prompt comes from a
    `<stem>.txt` sidecar (A first, then B) or else `default_prompt`.
    """
    a_name, a_stem, a_txt = _split(a_files, "A")
    b_name, b_stem, b_txt = _split(b_files, "B")
    default_prompt = (default_prompt or "").strip() or None
    res = MatchResult(pairs=[])
    if index is not None:
        used_a: set[str] = set()
        used_b: set[str] = set()
        for e in index:
            pa = a_name.get(e.a) or a_stem.get(Path(e.a).stem)
            pb = b_name.get(e.b) or b_stem.get(Path(e.b).stem)
            if pa is None or pb is None:
                missing = [f"A:{e.a}"] * (pa is None) + [f"B:{e.b}"] * (pb is None)
                res.problems.append(f"Index entry {e.prompt[:40]!r} skipped: missing {', '.join(missing)}.")
                continue
            used_a.add(pa.name)
            used_b.add(pb.name)
            res.pairs.append(Pair(e.prompt, pa.stem, pa, pb))
        res.unmatched_a = sorted(set(a_name) - used_a)
        res.unmatched_b = sorted(set(b_name) - used_b)
    else:
        for stem in sorted(a_stem):
            if stem not in b_stem:
                continue
            side = a_txt.get(stem) or b_txt.get(stem)
            prompt = _read_sidecar(side) if side else default_prompt
            if not prompt:
                raise InputError(
                    f"No prompt for {a_stem[stem].name}: give an index file, a {stem}.txt prompt file, "
                    "or a default prompt."
                )
            res.pairs.append(Pair(prompt, stem, a_stem[stem], b_stem[stem]))
        res.unmatched_a = sorted(a_stem[s].name for s in set(a_stem) - set(b_stem))
        res.unmatched_b = sorted(b_stem[s].name for s in set(b_stem) - set(a_stem))
    if not res.pairs:
        raise InputError("No A/B pairs could be matched. " + res.summary())
    return res


def ab_frame(
    pairs: Sequence[Pair], scores_a: Mapping[str, Sequence[float]], scores_b: Mapping[str, Sequence[float]]
) -> pd.DataFrame:
    """All scores, one row per pair: prompt, key, file names, then `A <metric>` / `B <metric>` columns."""
    df = pd.DataFrame(
        {
            "prompt": [p.prompt for p in pairs],
            "key": [p.key for p in pairs],
            "a_file": [p.a.name for p in pairs],
            "b_file": [p.b.name for p in pairs],
        }
    )
    for m in scores_a:
        df[f"A {label(m)}"] = np.asarray(scores_a[m], dtype=np.float64)
        df[f"B {label(m)}"] = np.asarray(scores_b[m], dtype=np.float64)
    return df


def win_rate_table(
    scores_a: Mapping[str, Sequence[float]],
    scores_b: Mapping[str, Sequence[float]],
    method: str = "wilson",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Per metric: pairs, wins/ties/losses of A, win rate of A (ties = ½) and its CI."""
    rows = []
    for m in scores_a:
        w = win_rate(scores_a[m], scores_b[m], method=method, confidence=confidence)
        rows.append(
            {
                "metric": label(m),
                "pairs": w.n,
                "A wins": w.wins,
                "ties": w.ties,
                "B wins": w.losses,
                "A win rate": w.rate,
                "CI low": w.low,
                "CI high": w.high,
            }
        )
    return pd.DataFrame(rows)
