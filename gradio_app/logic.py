"""Pure functions behind the Gradio app: ranking, winners, the scoring paradox, upload checks,
A/B matching, win-rate tables and CSV export. No Gradio and no models in here."""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icthp_core.data.images import IMAGE_SUFFIXES, display_name
from icthp_core.data.images import check_image as core_check_image
from icthp_core.errors import ICTHPError
from icthp_core.evaluation.stats import win_rate
from icthp_core.scoring.registry import list_metrics, metric_label
from icthp_core.scoring.selection import competition_ranks

#: ICT, HP and ICT-HP: the metrics of the two published models (they share one scorer in the app)
CORE_METRICS: tuple[str, ...] = ("ict", "hp", "ict_hp")
PRIMARY = "ict_hp"
IMAGE_EXTS = frozenset(IMAGE_SUFFIXES)
MAX_PROMPT_FILE_BYTES = 64 * 1024


class InputError(ICTHPError, ValueError):
    """A problem with what the user supplied; the message is shown in the UI as is."""


_DIR_PART = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s:'\"]+)+[\\/]")


def public_message(message: str) -> str:
    """`message` with the folders of any absolute path removed: a user never sees the server's file layout."""
    return _DIR_PART.sub("", message)


def label(metric: str) -> str:
    return metric_label(metric)


def alignment_baselines() -> list[str]:
    """Registered text-image alignment metrics other than ICT / ICT-HP (the scoring paradox compares against them)."""
    return [m for m in list_metrics("alignment") if m not in CORE_METRICS]


# --------------------------------------------------------------------------- ranking / winners


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


# --------------------------------------------------------------------------- uploads / paths


@dataclass(frozen=True)
class UploadLimits:
    min_count: int = 2
    max_count: int = 16
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000


def _display_name(path: str | os.PathLike) -> str:
    return Path(path).name


def check_image(path: str | os.PathLike, limits: UploadLimits) -> str | None:
    """Why this file is not an acceptable image (None when it is)."""
    p = Path(path)
    name = p.name
    try:
        size = p.stat().st_size
    except OSError as e:
        return f"{name}: cannot be read ({e.strerror})"
    if size > limits.max_bytes:
        return f"{name}: {size / 2**20:.1f} MiB is over the {limits.max_bytes / 2**20:.0f} MiB limit"
    # the same decode-and-limit check as scoring (icthp_core.data.images), named by the upload's base name only
    why = core_check_image(p, name=display_name(name), max_pixels=limits.max_pixels)
    return None if why is None else public_message(why)


def validate_images(paths: Sequence[str | os.PathLike] | None, limits: UploadLimits) -> tuple[list[Path], list[str]]:
    """Split uploads into accepted images and rejection messages; raise InputError on a bad count."""
    paths = list(paths or [])
    if len(paths) > limits.max_count:
        raise InputError(f"{len(paths)} files uploaded; at most {limits.max_count} images are allowed.")
    ok: list[Path] = []
    rejected: list[str] = []
    for p in paths:
        why = check_image(p, limits)
        if why:
            rejected.append(why)
        else:
            ok.append(Path(p))
    if len(ok) < limits.min_count:
        msg = f"Need at least {limits.min_count} images, got {len(ok)} valid one(s)."
        if rejected:
            msg += " Rejected: " + "; ".join(rejected)
        raise InputError(msg)
    return ok, rejected


def unique_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """File names for display; duplicates get a numeric suffix so each row is distinct."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        n = _display_name(p)
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n} ({k + 1})")
    return out


def resolve_allowed_dir(user_path: str, roots: Sequence[str | os.PathLike]) -> Path:
    """Resolve a folder typed by the user; it must lie under one of the configured roots."""
    if not roots:
        raise InputError("Folder inputs are disabled: start the app with --ab-root DIR to allow folders under DIR.")
    text = (user_path or "").strip()
    if not text:
        raise InputError("No folder given.")
    real_roots = [Path(r).resolve() for r in roots]
    candidates = [Path(text)] if Path(text).is_absolute() else [r / text for r in real_roots]
    for c in candidates:
        real = c.resolve()
        if any(real == r or real.is_relative_to(r) for r in real_roots):
            if real.is_dir():
                return real
            raise InputError(f"Folder not found: {text}")
    raise InputError(f"Folder {text!r} is outside the allowed roots ({', '.join(map(str, real_roots))}).")


def list_folder(folder: Path, root_check: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """Image and .txt files directly in `folder`, sorted; links leading outside the roots are skipped."""
    real_roots = [Path(r).resolve() for r in root_check]
    out = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS | {".txt"}:
            continue
        real = p.resolve()
        if real_roots and not any(real.is_relative_to(r) for r in real_roots):
            continue
        out.append(p)
    return out


# --------------------------------------------------------------------------- A/B matching


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


#: first characters that make a spreadsheet read a cell as a formula (CSV/formula injection)
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula, prefixed with `'`; other values unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a score table as UTF-8 CSV (full float precision); text cells cannot start a formula."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    safe = df.copy()
    safe.columns = [neutralise_cell(str(c)) for c in safe.columns]
    for c in safe.columns:
        if not pd.api.types.is_numeric_dtype(safe[c]):
            safe[c] = safe[c].map(neutralise_cell)
    safe.to_csv(p, index=False, float_format="%.8g")
    return p
