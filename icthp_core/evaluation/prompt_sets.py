"""Prompt sets for generation benchmarks, each prompt with its metadata row.

- Parti-Prompts (`PartiPrompts.tsv`, columns `Prompt`, `Category`, `Challenge`, `Note`; 1,632 prompts),
- GenEval (`evaluation_metadata.jsonl`, one object per line with `prompt`, `tag`, `include`, ...; 553 prompts),
- any `.txt` (one prompt a line), `.jsonl`/`.json` (strings or objects), `.csv`/`.tsv`/`.parquet` file.

The metadata row is written unchanged (plus a `prompt` key) next to the images, as GenEval's own generation script
does, so GenEval's `evaluate_images.py` can read it back.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from icthp_core.data.prompts import prompt_column
from icthp_core.errors import DataError, MissingFileError

__all__ = ["PromptRecord", "load_prompt_set"]


@dataclass(frozen=True)
class PromptRecord:
    """Prompt number `index` (0-based, in file order) of a set, with its metadata row."""

    index: int
    prompt: str
    metadata: dict = field(default_factory=dict)


def _clean(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def _rows(path: Path, column: str | None) -> list[tuple[str, dict, str]]:
    """(prompt, metadata, where) per entry of the file."""
    suf = path.suffix.lower()
    if suf == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [(s.strip(), {}, f":{i + 1}") for i, s in enumerate(lines) if s.strip()]
    if suf in (".jsonl", ".json"):
        text = path.read_text(encoding="utf-8")
        if suf == ".json":
            entries = [(r, f"[{i}]") for i, r in enumerate(json.loads(text))]
        else:
            entries = []
            for i, ln in enumerate(text.splitlines()):
                if ln.strip():
                    try:
                        entries.append((json.loads(ln), f":{i + 1}"))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{i + 1}: not JSON ({e.msg})") from None
        out = []
        for r, where in entries:
            if isinstance(r, str):
                out.append((r, {}, where))
            elif isinstance(r, dict):
                out.append((str(r[prompt_column(r.keys(), column, path, where)]), dict(r), where))
            else:
                raise DataError(f"{path}{where}: neither a string nor an object")
        return out
    if suf in (".csv", ".tsv", ".parquet"):
        import pandas as pd

        df = pd.read_parquet(path) if suf == ".parquet" else pd.read_csv(path, sep="\t" if suf == ".tsv" else ",")
        col = prompt_column(df.columns, column, path)
        rows = df.to_dict(orient="records")
        return [(str(r[col]), {k: _clean(v) for k, v in r.items()}, f" row {i + 1}") for i, r in enumerate(rows)]
    raise DataError(f"{path}: unsupported prompt file type {suf!r} (.txt, .jsonl, .json, .csv, .tsv, .parquet)")


def load_prompt_set(path: str | Path, column: str | None = None, limit: int | None = None) -> list[PromptRecord]:
    """The prompts of `path` in file order (the first `limit` when given), each with its metadata row.

    The metadata always has a `prompt` key holding the prompt (for GenEval's evaluator). An empty prompt is an error
    naming its line/row; blank lines of `.txt` files are skipped.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"prompt file not found: {p}")
    records = []
    for prompt, meta, where in _rows(p, column):
        if not prompt.strip() or prompt == "None":
            raise DataError(f"{p}{where}: empty prompt")
        records.append(PromptRecord(len(records), prompt.strip(), {**meta, "prompt": prompt.strip()}))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DataError(f"{p}: no prompts found")
    return records
