"""Incremental, resumable score files (.jsonl or .csv) and reading of (image, prompt) lists."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

BASE_FIELDS = ["image", "prompt"]


def _fmt(v):
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else v


class ScoreWriter:
    """Appends one row per scored image and flushes after every batch, so a killed run loses nothing."""

    def __init__(self, path: str | os.PathLike, metrics: list[str], append: bool = False):
        self.path = Path(path)
        self.kind = _kind(self.path)
        self.fields = BASE_FIELDS + list(metrics) + ["error"]
        mode = "a" if append else "w"
        fresh = not append or not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, mode, newline="", encoding="utf-8")
        if self.kind == "csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=self.fields, extrasaction="ignore")
            if fresh:
                self._csv.writeheader()

    def write(self, rows: list[dict]) -> None:
        for row in rows:
            out = {f: row.get(f) for f in self.fields}
            if self.kind == "csv":
                self._csv.writerow({k: _fmt(v) for k, v in out.items()})
            else:
                self._fh.write(json.dumps(out, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ScoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ValueError(f"--output {path}: unsupported file type {suffix!r} (use .jsonl or .csv)")


def read_rows(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of a score file written by ScoreWriter; a torn last line (killed run) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    if _kind(path) == "csv":
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("image") is not None and None not in row.values():
                    yield row
    else:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "image" in row:
                    yield row


def repair_tail(path: str | os.PathLike) -> None:
    """Cut an incomplete last line (a run killed mid-write) so appended rows start on a fresh line."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


def done_keys(path: str | os.PathLike) -> set[tuple[str, str]]:
    """(image, prompt) pairs already written."""
    return {(str(r["image"]), str(r.get("prompt") or "")) for r in read_rows(path)}


def read_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(image, prompt) pairs from a CSV (header with `image`, `prompt`) or JSONL file.

    Relative image paths are kept as given when they exist from the current directory, else resolved against the
    file's folder. Raises ValueError naming the file and line for a malformed row.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--prompts-file {path}: no such file")
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: invalid JSON ({e})") from e
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"image", "prompt"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: CSV needs the columns 'image' and 'prompt', got {reader.fieldnames}")
            rows = [(n, r) for n, r in enumerate(reader, 2)]
    else:
        raise ValueError(f"--prompts-file {path}: use a .csv or .jsonl file")
    out = []
    for n, r in rows:
        if not isinstance(r, dict) or not r.get("image") or not isinstance(r.get("prompt"), str):
            raise ValueError(f"{path}:{n}: each row needs a non-empty 'image' and a 'prompt' string")
        img = str(r["image"])
        if not os.path.isabs(img) and not os.path.exists(img) and (path.parent / img).exists():
            img = str(path.parent / img)
        out.append((img, r["prompt"]))
    return out
