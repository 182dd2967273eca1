"""Parquet score outputs: one file, or a folder of per-shard files (resumable at shard granularity).

Columns: `image`, `image_raw`, `prompt`, kept input columns (text), every metric (float64, null on error) and
`error` (null when scored). Parquet strings must be UTF-8, so a file name that is not valid UTF-8 is written in
`image` for display (undecodable bytes as `\\xNN`) and its exact bytes in `image_raw` (null for every other row);
`row_image(row)` gives the name back as Python's `os.fsdecode` spells it, so resume recognises it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from icthp_core.data.images import display_name
from icthp_core.data.rows import keep_text, row_key
from icthp_core.errors import OutputError

MANIFEST = "_manifest.json"
RAW = "image_raw"


def _raw_name(name: object) -> bytes | None:
    """The bytes of a file name that is not valid UTF-8 (None when it is)."""
    text = str(name)
    try:
        text.encode("utf-8")
        return None
    except UnicodeEncodeError:
        return os.fsencode(text)


def schema_names(metrics: Sequence[str], keep: Sequence[str] = ()) -> list[str]:
    """The columns of a parquet score table, in order."""
    return ["image", RAW, "prompt", *keep, *metrics, "error"]


def rows_table(rows: Sequence[dict], metrics: Sequence[str], keep: Sequence[str] = ()):
    """A pyarrow table of score rows with a fixed schema (see the module docstring)."""
    import pyarrow as pa

    def text(name: str):
        return pa.array([None if r.get(name) is None else display_name(str(r[name])) for r in rows], pa.string())

    cols = {"image": text("image"), RAW: pa.array([_raw_name(r.get("image")) for r in rows], pa.binary())}
    cols["prompt"] = text("prompt")
    for k in keep:
        cols[k] = pa.array([keep_text(r.get(k)) for r in rows], type=pa.string())
    for m in metrics:
        cols[m] = pa.array([r.get(m) if r.get("error") is None else None for r in rows], type=pa.float64())
    cols["error"] = text("error")
    return pa.table(cols)


def table_rows(table) -> list[dict]:
    """Score rows of a parquet score table; `image` as written by the run (undecodable bytes restored)."""
    rows = table.to_pylist()
    for r in rows:
        raw = r.pop(RAW, None)
        if raw is not None:
            r["image"] = os.fsdecode(raw)
    return rows


def read_parquet_rows(path: str | os.PathLike):
    """The table of a parquet score file; OutputError naming the file when it cannot be read."""
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        raise OutputError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None


def _conform(table, path: Path, metrics: Sequence[str], keep: Sequence[str]):
    """`table` with this run's columns (an `image_raw` column added to files written before it existed)."""
    import pyarrow as pa

    want = schema_names(metrics, keep)
    if RAW not in table.column_names:
        table = table.append_column(RAW, pa.nulls(table.num_rows, pa.binary()))
    if sorted(table.column_names) != sorted(want):
        have = [c for c in table.column_names if c != RAW]
        raise OutputError(
            f"{path}: cannot resume, it has the columns {have} but this run writes "
            f"{[c for c in want if c != RAW]}; resume with the same --metrics and --keep-columns, "
            "or pass --overwrite or another --output"
        )
    return table.select(want).cast(rows_table([], metrics, keep).schema)


class ParquetScoreFile:
    """Score rows into one `.parquet` file, safe against a kill.

    Every `write` is flushed at once as a row group of its own file in the hidden folder `.<name>.parts/` (written
    to a temp file and renamed, so a part is whole or absent). `close()` merges the existing file and the parts
    into the file (temp file + rename) and removes the parts. A run killed at any point keeps every part written;
    opening the file again (`resume=True`) merges what is there first, keeping each (image, prompt) once.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        metrics: Sequence[str],
        keep: Sequence[str] = (),
        resume: bool = False,
        retry_errors: bool = False,
    ):
        self.path, self.metrics, self.keep = Path(path), list(metrics), list(keep)
        self.parts = self.path.with_name(f".{self.path.name}.parts")
        if not resume:  # a fresh run (--overwrite or a new file): nothing of an older run may be merged in
            self.path.unlink(missing_ok=True)
            shutil.rmtree(self.parts, ignore_errors=True)
        self.done: set[tuple[str, str]] = set()
        if resume:
            self.done = {row_key(r["image"], r.get("prompt")) for r in self.merge(drop_errors=retry_errors)}
        try:
            self.parts.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{self.parts}: cannot be written ({e.strerror or type(e).__name__})") from None
        self._n = len(list(self.parts.glob("part-*.parquet")))

    def write(self, rows: Sequence[dict]) -> None:
        import pyarrow.parquet as pq

        if not rows:
            return
        final = self.parts / f"part-{self._n:06d}.parquet"
        tmp = final.with_name(f".{final.name}.tmp")
        try:
            pq.write_table(rows_table(rows, self.metrics, self.keep), tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except OSError as e:
            raise OutputError(f"{self.path}: write failed ({e.strerror or type(e).__name__})") from None
        self._n += 1

    def merge(self, drop_errors: bool = False) -> list[dict]:
        """Merge the file and its parts into the file (each key once, error rows dropped if asked); its rows."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [read_parquet_rows(self.path)] if self.path.exists() else []
        parts = sorted(self.parts.glob("part-*.parquet")) if self.parts.is_dir() else []
        tables += [read_parquet_rows(p) for p in parts]
        tables = [_conform(t, self.path, self.metrics, self.keep) for t in tables]
        table = pa.concat_tables(tables) if tables else rows_table([], self.metrics, self.keep)
        rows, seen, keepers = table_rows(table), set(), []
        for i, r in enumerate(rows):
            key = row_key(r["image"], r.get("prompt"))
            if key in seen or (drop_errors and r.get("error") is not None):
                continue
            seen.add(key)
            keepers.append(i)
        if tables and (parts or len(keepers) < table.num_rows):
            table = table.take(pa.array(keepers, pa.int64()))
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            try:
                pq.write_table(table, tmp)
                os.replace(tmp, self.path)
            except OSError as e:
                raise OutputError(f"{self.path}: write failed ({e.strerror or type(e).__name__})") from None
        shutil.rmtree(self.parts, ignore_errors=True)
        return [rows[i] for i in keepers]

    def close(self) -> None:
        self.merge()


def parquet_done_keys(path: str | os.PathLike) -> set[tuple[str, str]]:
    """(image, prompt) pairs already in a parquet score file."""
    if not Path(path).exists():
        return set()
    return {row_key(r["image"], r.get("prompt")) for r in table_rows(read_parquet_rows(path))}


class ShardDir:
    """A folder of `part-NNNNN.parquet` files, one per input shard, plus `_manifest.json` (plan fingerprint).

    A shard file appears atomically once all its rows are scored, so a resumed run skips exactly the finished
    shards; a different plan (inputs, shard size, metrics, kept columns) is refused unless `overwrite`.
    `retry_errors` removes the shards holding an error row, so they are scored again.
    """

    def __init__(
        self,
        path,
        fingerprint: str,
        num_shards: int,
        metrics: Sequence[str],
        keep=(),
        overwrite=False,
        retry_errors=False,
    ):
        self.path, self.metrics, self.keep = Path(path), list(metrics), list(keep)
        manifest = self.path / MANIFEST
        if overwrite and self.path.exists():
            for f in self.path.glob("part-*.parquet"):
                f.unlink()
            manifest.unlink(missing_ok=True)
        if manifest.exists():
            self._check(json.loads(manifest.read_text()), fingerprint)
        elif self.path.exists() and any(self.path.iterdir()):
            raise OutputError(f"{self.path}: folder is not empty and has no {MANIFEST}; choose another --output")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            data = {"fingerprint": fingerprint, "num_shards": num_shards, "metrics": self.metrics, "keep": self.keep}
            manifest.write_text(json.dumps(data))
        except OSError as e:
            raise OutputError(f"{self.path}: cannot be written ({e.strerror or type(e).__name__})") from None
        if retry_errors:
            for f in self.path.glob("part-*.parquet"):
                table = read_parquet_rows(f)
                if table.column("error").null_count < table.num_rows:
                    f.unlink()

    def _check(self, old: dict, fingerprint: str) -> None:
        if old.get("metrics") != self.metrics or old.get("keep", []) != self.keep:
            raise OutputError(
                f"{self.path}: cannot resume, it has the metrics {old.get('metrics')} (kept columns "
                f"{old.get('keep', [])}) but this run writes {self.metrics} ({self.keep}); resume with the same "
                "--metrics and --keep-columns, or pass --overwrite or another --output"
            )
        if old.get("fingerprint") != fingerprint:
            raise OutputError(
                f"{self.path}: holds shards of a different run (inputs or --shard-size changed); "
                "pass --overwrite or choose another --output"
            )

    def shard_path(self, i: int) -> Path:
        return self.path / f"part-{i:05d}.parquet"

    def done(self) -> set[int]:
        return {int(f.stem.split("-")[1]) for f in self.path.glob("part-*.parquet")}

    def write_shard(self, i: int, rows: Sequence[dict]) -> None:
        import pyarrow.parquet as pq

        tmp = self.path / f".part-{i:05d}.parquet.tmp"
        try:
            pq.write_table(rows_table(rows, self.metrics, self.keep), tmp)
            os.replace(tmp, self.shard_path(i))
        except OSError as e:
            raise OutputError(f"{self.path}: write failed ({e.strerror or type(e).__name__})") from None

    def read_all(self):
        """Every finished shard as one table, in shard order."""
        import pyarrow as pa

        files = sorted(self.path.glob("part-*.parquet"))
        if not files:
            return rows_table([], self.metrics, self.keep)
        return pa.concat_tables([_conform(read_parquet_rows(f), f, self.metrics, self.keep) for f in files])
