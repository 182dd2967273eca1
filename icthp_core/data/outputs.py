"""Incremental, resumable score files (.jsonl or .csv).

Guarantees (see docs/reliability.md):
- rows are flushed and fsynced after every batch; a killed run loses at most the batch in flight, and `resume`
  cuts a torn last record (a partial JSON line, or a CSV record cut inside a quoted multi-line field);
- a file is resumed only when its columns are those of this run (same metrics), else `OutputError`;
- file names that are not valid UTF-8 are kept reversibly: JSONL writes their undecodable bytes as `\\udcXX`
  JSON escapes (`os.fsencode(json.loads(...))` gives the original bytes back); CSV writes the original bytes
  (read it with `errors="surrogateescape"`);
- non-finite scores never reach a file (`icthp_core.data.rows.finish_row` makes them error rows; a stray one is
  written as null / empty).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from icthp_core.data.rows import row_key
from icthp_core.errors import OutputError

BASE_FIELDS = ["image", "prompt"]
#: written as \uXXXX in JSONL: lone surrogates (undecodable file-name bytes) and the characters that some
#: line splitters (str.splitlines, JavaScript) take for line breaks
_ESCAPED = re.compile("[\ud800-\udfff\u2028\u2029\u0085]")


def score_fields(metrics: Sequence[str], keep: Sequence[str] = ()) -> list[str]:
    """Columns of a score file: image, prompt, kept input columns, one per metric, error."""
    return BASE_FIELDS + list(keep) + list(metrics) + ["error"]


def _fmt(v):
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def _json_value(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def json_line(obj: object) -> str:
    """One JSON line (no newline): UTF-8 text; lone surrogates and U+2028/U+2029/U+0085 as \\uXXXX escapes."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return _ESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def check_writable(path: str | os.PathLike, what: str = "--output") -> Path:
    """Raise OutputError unless `path` can be written (its folder is created); call before loading models."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {p}: is a folder, not a file")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            with open(p, "ab"):
                pass
        else:
            with open(p, "xb"):
                pass
            p.unlink()
    except OSError as e:
        raise OutputError(f"{what} {p}: cannot be written ({e.strerror or type(e).__name__})") from None
    return p


def stored_image(image: object, out: str | os.PathLike) -> object:
    """An item's image as a score file at `out` holds it: an existing file's path relative to the file's folder
    (so the table reads back from any directory); anything else (bytes, error locations) as given."""
    if isinstance(image, str) and os.path.isfile(image):
        from icthp_core.data.paths import portable

        return portable(image, Path(out).parent)
    return image


def item_image(stored: object, out: str | os.PathLike) -> object:
    """The inverse of `stored_image`: a path held in the score file at `out`, as the item named it (relative to the
    current directory, or absolute as given); anything else as it is."""
    if not isinstance(stored, str) or os.path.isabs(stored):
        return stored
    from icthp_core.data.paths import resolve

    full = resolve(stored, Path(out).parent)
    return os.path.relpath(full) if os.path.isfile(full) else stored


class ScoreWriter:
    """Appends one row per scored image and flushes after every batch, so a killed run loses nothing."""

    def __init__(self, path: str | os.PathLike, metrics: Sequence[str], append: bool = False, keep: Sequence[str] = ()):
        self.path = Path(path)
        self.kind = output_kind(self.path)
        self.fields = score_fields(metrics, keep)
        mode = "a" if append else "w"
        fresh = not append or not self.path.exists() or self.path.stat().st_size == 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, mode, newline="", encoding="utf-8", errors="surrogateescape")
        except OSError as e:
            raise OutputError(f"{self.path}: cannot be written ({e.strerror or type(e).__name__})") from None
        if self.kind == "csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=self.fields, extrasaction="ignore")
            if fresh:
                self._guard(self._csv.writeheader)

    def _guard(self, fn, *args) -> None:
        try:
            fn(*args)
        except OSError as e:
            raise OutputError(f"{self.path}: write failed ({e.strerror or type(e).__name__})") from None

    def write(self, rows: list[dict]) -> None:
        def _write() -> None:
            for row in rows:
                out = {f: row.get(f) for f in self.fields}
                out["image"] = stored_image(out["image"], self.path)
                if self.kind == "csv":
                    self._csv.writerow({k: _fmt(v) for k, v in out.items()})
                else:
                    self._fh.write(json_line({k: _json_value(v) for k, v in out.items()}) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

        self._guard(_write)

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError as e:
            raise OutputError(f"{self.path}: write failed ({e.strerror or type(e).__name__})") from None

    def __enter__(self) -> ScoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def output_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise OutputError(f"--output {path}: unsupported file type {suffix!r} (use .jsonl or .csv)")


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape")


def read_rows(path: str | os.PathLike) -> Iterator[dict]:
    """Rows of a score file written by ScoreWriter; a torn last record (killed run) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    text = _read_text(path)
    if output_kind(path) == "csv":
        text = text[: _csv_complete_end(text)]
        for row in csv.DictReader(io.StringIO(text, newline="")):
            if row.get("image") is not None and None not in row.values() and None not in row:
                yield row
    else:
        for line in text.split("\n"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "image" in row:
                yield row


def _csv_complete_end(text: str) -> int:
    """Length of the complete CSV records at the start of `text`: up to the last newline outside quotes."""
    end, quotes = 0, 0
    start = 0
    while True:
        nl = text.find("\n", start)
        if nl < 0:
            return end
        quotes += text.count('"', start, nl)
        if quotes % 2 == 0:
            end = nl + 1
        start = nl + 1


def repair_tail(path: str | os.PathLike) -> int:
    """Cut an incomplete last record (a run killed mid-write) so appended rows start cleanly; bytes removed."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    if output_kind(path) == "csv":
        text = data.decode("utf-8", "surrogateescape")
        keep = len(text[: _csv_complete_end(text)].encode("utf-8", "surrogateescape"))
    else:
        keep = data.rfind(b"\n") + 1
    if keep < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(keep)
    return len(data) - keep


def existing_fields(path: str | os.PathLike) -> list[str] | None:
    """Columns of an existing score file (CSV header, keys of the first JSONL row); None when it has none."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return None
    if output_kind(path) == "csv":
        text = _read_text(path)
        text = text[: _csv_complete_end(text)]
        header = next(csv.reader(io.StringIO(text, newline="")), None)
        return list(header) if header else None
    first = next(read_rows(path), None)
    return list(first) if first else None


def prepare_resume(
    path: str | os.PathLike, metrics: Sequence[str], retry_errors: bool = False, keep: Sequence[str] = ()
) -> set[tuple[str, str]]:
    """Make `path` ready to be appended to by a run with `metrics`; return the (image, prompt) keys already done.

    Cuts a torn last record; refuses (OutputError) a file whose columns differ from this run's; with
    `retry_errors`, rows that ended in an error are removed (rewritten atomically) so they are scored again.
    """
    path = Path(path)
    repair_tail(path)
    fields, want = existing_fields(path), score_fields(metrics, keep)
    if fields is not None and fields != want:
        raise OutputError(
            f"{path}: cannot resume, it has the columns {fields} but this run writes {want}; "
            "resume with the same --metrics and --keep-columns, or pass --overwrite or another --output"
        )
    rows = list(read_rows(path))
    if retry_errors and any(r.get("error") for r in rows):
        rows = [r for r in rows if not r.get("error")]
        tmp = path.with_name(f".{path.stem}.retry{path.suffix}")
        with ScoreWriter(tmp, list(metrics), keep=keep) as w:
            w.write([{k: _parse_number(v) if k in metrics else v for k, v in r.items()} for r in rows])
        os.replace(tmp, path)
    return {row_key(r["image"], r.get("prompt")) for r in rows if not (retry_errors and r.get("error"))}


def _parse_number(v):
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def done_keys(path: str | os.PathLike) -> set[tuple[str, str]]:
    """(image, prompt) pairs already written."""
    return {row_key(r["image"], r.get("prompt")) for r in read_rows(path)}
