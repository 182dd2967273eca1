"""Prompt lists and (image, prompt) lists.

- `load_prompts`: prompts for DRaFT training and evaluation: .txt, .jsonl, .csv/.tsv (e.g. PartiPrompts.tsv),
  .parquet, and Pick-High `.pkl` splits (pickle runs code on load: only with `allow_pickle=True`);
- `read_prompt_rows`: the `--prompts-file` of `icthp score` (CSV or JSONL of {image, prompt}), bad lines as error rows.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from icthp_core.errors import DataError, DataFormatError, MissingFileError

#: the one list of prompt columns (prompt files, tables, parquet/HF data sets), first match wins
PROMPT_COLUMNS = ("prompt", "Prompt", "caption", "text", "txt", "easy_prompt", "refine_prompt")


def check_prompt(prompt: object, where: str = "prompt") -> str:
    """Return the prompt, or raise DataError (a ValueError) for a non-string or blank prompt."""
    if not isinstance(prompt, str):
        raise DataError(f"{where}: expected a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise DataError(f"{where}: the prompt is empty")
    return prompt


def prompt_column(columns, column: str | None, path: Path, where: str = "") -> str:
    """`column` if the table has it, else the first of PROMPT_COLUMNS it has; a one-line error naming `path`."""
    if column is not None:
        if column not in columns:
            raise DataFormatError(f"{path}{where}: no column {column!r}; columns are {list(columns)}")
        return column
    for c in PROMPT_COLUMNS:
        if c in columns:
            return c
    raise DataFormatError(
        f"{path}{where}: none of the prompt columns {PROMPT_COLUMNS} found; columns are {list(columns)}"
    )


def load_prompts(path: str | Path, column: str | None = None, allow_pickle: bool = False) -> list[str]:
    """Non-empty, stripped prompts from `path`.

    `.txt`: one per line; `.jsonl`: one object (field `column`, default the first of PROMPT_COLUMNS present) or
    string per line; `.json`: a list of strings/objects; `.csv`/`.tsv`/`.parquet`: the column; `.pkl`: a Pick-High
    split DataFrame (`easy_prompt` unless `column`), needs `allow_pickle=True`.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"prompt file not found: {p}")
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
                raise DataError(f"{p}: entry {i} is neither a string nor an object")
    elif suf in (".csv", ".tsv", ".parquet", ".pkl"):
        import pandas as pd

        if suf == ".pkl":
            if not allow_pickle:
                raise DataError(
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
        raise DataError(f"{p}: unsupported prompt file type {suf!r} (.txt, .jsonl, .json, .csv, .tsv, .parquet, .pkl)")
    out = [s.strip() for s in items if s and s.strip()]
    if not out:
        raise DataError(f"{p}: no prompts found")
    return out


# ------------------------------------------------------------------------------------ (image, prompt) lists


def read_text_file(path: str | os.PathLike, what: str = "--prompts-file") -> str:
    """The text of a UTF-8 file (a BOM is dropped); DataError naming the file and line for other encodings."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} {path}: no such file")
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} at column {col}); save the file as UTF-8"
        ) from None


def read_prompt_rows(path: str | os.PathLike) -> tuple[list[tuple[str, str]], list[dict]]:
    """(image, prompt) pairs from a CSV (header with `image`, `prompt`) or JSONL file, and error rows for bad lines.

    Accepts UTF-8 with or without BOM, LF or CRLF; JSONL lines are split on '\\n' only (U+2028/U+0085 inside a
    line are text). A malformed row becomes `{"image", "prompt", "error": "<file>:<line>: ..."}`; a file that
    cannot be read at all (missing, not UTF-8, no header) raises DataError. Relative image paths are kept as
    given when they exist from the current directory, else resolved against the file's folder.
    """
    path = Path(path)
    text = read_text_file(path)
    rows: list[tuple[int, object]] = []
    errors: list[dict] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.split("\n"), 1):
            line = line.rstrip("\r")
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                errors.append({"image": f"{path}:{n}", "prompt": None, "error": f"{path}:{n}: invalid JSON ({e})"})
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or not {"image", "prompt"} <= set(reader.fieldnames):
            raise DataError(f"{path}: CSV needs the columns 'image' and 'prompt', got {reader.fieldnames}")
        start = 2
        for r in reader:
            rows.append((start, r))
            start = reader.line_num + 1
    else:
        raise DataError(f"--prompts-file {path}: use a .csv or .jsonl file")
    out = []
    for n, r in rows:
        where = f"{path}:{n}"
        image = r.get("image") if isinstance(r, dict) else None
        prompt = r.get("prompt") if isinstance(r, dict) else None
        try:
            if not isinstance(r, dict):
                raise DataError(f"{where}: expected an object with 'image' and 'prompt'")
            if not isinstance(image, str) or not image.strip():
                raise DataError(f"{where}: 'image' is missing or empty")
            check_prompt(prompt, f"{where}: 'prompt'")
        except ValueError as e:
            errors.append(
                {"image": image if isinstance(image, str) and image else where, "prompt": None, "error": str(e)}
            )
            continue
        img = image
        if not os.path.isabs(img) and not os.path.exists(img) and (path.parent / img).exists():
            img = str(path.parent / img)
        out.append((img, prompt))
    return out, errors


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(image, prompt) pairs of a prompts file (see `read_prompt_rows`); DataError naming the first bad line."""
    pairs, errors = read_prompt_rows(path)
    if errors:
        raise DataError(errors[0]["error"])
    return pairs
