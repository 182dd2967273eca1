"""Prompt lists for DRaFT training and evaluation: .txt, .jsonl, .csv/.tsv (e.g. PartiPrompts.tsv), .parquet,
and Pick-High `.pkl` splits (pickle runs code on load: only with `allow_pickle=True`)."""

from __future__ import annotations

import json
from pathlib import Path

#: the one list of prompt columns (prompt files, tables, parquet/HF data sets), first match wins
PROMPT_COLUMNS = ("prompt", "Prompt", "caption", "text", "txt", "easy_prompt", "refine_prompt")


def check_prompt(prompt: object, where: str = "prompt") -> str:
    """Return the prompt, or raise ValueError for a non-string or blank prompt."""
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: expected a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{where}: the prompt is empty")
    return prompt


def prompt_column(columns, column: str | None, path: Path, where: str = "") -> str:
    """`column` if the table has it, else the first of PROMPT_COLUMNS it has; a one-line error naming `path`."""
    if column is not None:
        if column not in columns:
            raise ValueError(f"{path}{where}: no column {column!r}; columns are {list(columns)}")
        return column
    for c in PROMPT_COLUMNS:
        if c in columns:
            return c
    raise ValueError(f"{path}{where}: none of the prompt columns {PROMPT_COLUMNS} found; columns are {list(columns)}")


def load_prompts(path: str | Path, column: str | None = None, allow_pickle: bool = False) -> list[str]:
    """Non-empty, stripped prompts from `path`.

    `.txt`: one per line; `.jsonl`: one object (field `column`, default the first of PROMPT_COLUMNS present) or
    string per line; `.json`: a list of strings/objects; `.csv`/`.tsv`/`.parquet`: the column; `.pkl`: a Pick-High
    split DataFrame (`easy_prompt` unless `column`), needs `allow_pickle=True`.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file not found: {p}")
    suf = p.suffix.lower()
    if suf == ".txt":
        items = p.read_text(encoding="utf-8").splitlines()
    elif suf in (".jsonl", ".json"):
        text = p.read_text(encoding="utf-8")
        rows = json.loads(text) if suf == ".json" else [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        items = []
        for i, r in enumerate(rows):
            if isinstance(r, str):
                items.append(r)
            elif isinstance(r, dict):
                items.append(str(r[prompt_column(r.keys(), column, p)]))
            else:
                raise ValueError(f"{p}: entry {i} is neither a string nor an object")
    elif suf in (".csv", ".tsv", ".parquet", ".pkl"):
        import pandas as pd

        if suf == ".pkl":
            if not allow_pickle:
                raise ValueError(
                    f"{p}: pickle runs code when loaded; set trust_pickle (allow_pickle=True in Python) if you trust it"
                )
            df = pd.read_pickle(p)
            column = column or "easy_prompt"
        elif suf == ".parquet":
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(p, sep="\t" if suf == ".tsv" else ",")
        items = df[prompt_column(df.columns, column, p)].astype(str).tolist()
    else:
        raise ValueError(f"{p}: unsupported prompt file type {suf!r} (.txt, .jsonl, .json, .csv, .tsv, .parquet, .pkl)")
    out = [s.strip() for s in items if s and s.strip()]
    if not out:
        raise ValueError(f"{p}: no prompts found")
    return out
