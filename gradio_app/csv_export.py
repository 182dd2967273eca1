"""CSV downloads with spreadsheet formulas neutralised."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

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
