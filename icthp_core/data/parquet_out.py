"""Parquet score outputs: one file (single process) or a folder of per-shard files (resumable at shard granularity).

Columns: `image`, `prompt`, kept input columns, every metric (float64, null on error) and `error` (null when scored).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

MANIFEST = "_manifest.json"


def rows_table(rows: Sequence[dict], metrics: Sequence[str], keep: Sequence[str] = ()):
    """A pyarrow table of score rows with a fixed schema (strings, float64 metrics, nullable)."""
    import pyarrow as pa

    def col(name, typ):
        return pa.array([r.get(name) for r in rows], type=typ)

    cols = {"image": col("image", pa.string()), "prompt": col("prompt", pa.string())}
    for k in keep:
        cols[k] = pa.array([None if r.get(k) is None else str(r.get(k)) for r in rows], type=pa.string())
    for m in metrics:
        cols[m] = pa.array([r.get(m) if r.get("error") is None else None for r in rows], type=pa.float64())
    cols["error"] = col("error", pa.string())
    return pa.table(cols)


def is_shard_dir(path: str | os.PathLike) -> bool:
    """A folder output: an existing folder, a path ending in '/', or a path without a suffix."""
    s = os.fspath(path)
    return Path(s).is_dir() or s.endswith(("/", os.sep)) or not Path(s).suffix


class ParquetScoreFile:
    """Score rows into one parquet file, written in row groups; `append=True` keeps the rows of an existing file.

    A parquet file is only readable once closed, so a run killed before `close()` leaves the previous file intact
    (rows go to `<file>.tmp` first and replace the file on close).
    """

    def __init__(self, path: str | os.PathLike, metrics: Sequence[str], keep: Sequence[str] = (), append=False):
        import pyarrow.parquet as pq

        self.path, self.metrics, self.keep = Path(path), list(metrics), list(keep)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(self.path.name + ".tmp")
        schema = rows_table([], self.metrics, self.keep).schema
        self._writer = pq.ParquetWriter(self._tmp, schema)
        if append and self.path.exists():
            old = read_parquet_rows(self.path)
            if set(old.column_names) != set(schema.names):
                raise ValueError(f"{self.path}: columns {old.column_names} differ from this run's {schema.names}")
            self._writer.write_table(old.select(schema.names).cast(schema))

    def write(self, rows: Sequence[dict]) -> None:
        if rows:
            self._writer.write_table(rows_table(rows, self.metrics, self.keep))

    def close(self) -> None:
        self._writer.close()
        os.replace(self._tmp, self.path)


def read_parquet_rows(path: str | os.PathLike):
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except Exception as e:
        raise ValueError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None


def parquet_done_keys(path: str | os.PathLike) -> set[tuple[str, str]]:
    """(image, prompt) pairs already in a parquet score file."""
    if not Path(path).exists():
        return set()
    t = read_parquet_rows(path)
    return {(str(i), str(p or "")) for i, p in zip(t["image"].to_pylist(), t["prompt"].to_pylist(), strict=True)}


class ShardDir:
    """A folder of `part-NNNNN.parquet` files, one per input shard, plus `_manifest.json` (plan fingerprint).

    A shard file appears atomically once all its rows are scored, so rerunning the same command skips exactly the
    finished shards; a different plan (inputs, shard size, metrics) is refused unless `overwrite`.
    """

    def __init__(self, path, fingerprint: str, num_shards: int, metrics: Sequence[str], keep=(), overwrite=False):
        self.path, self.metrics, self.keep = Path(path), list(metrics), list(keep)
        manifest = self.path / MANIFEST
        if overwrite and self.path.exists():
            for f in self.path.glob("part-*.parquet"):
                f.unlink()
            manifest.unlink(missing_ok=True)
        if manifest.exists():
            old = json.loads(manifest.read_text())
            if old.get("fingerprint") != fingerprint:
                raise ValueError(
                    f"{self.path}: holds shards of a different run (inputs, --shard-size or --metrics changed); "
                    "pass --overwrite or choose another --output"
                )
        elif self.path.exists() and any(self.path.iterdir()):
            raise ValueError(f"{self.path}: folder is not empty and has no {MANIFEST}; choose another --output")
        self.path.mkdir(parents=True, exist_ok=True)
        data = {"fingerprint": fingerprint, "num_shards": num_shards, "metrics": self.metrics, "keep": self.keep}
        manifest.write_text(json.dumps(data))

    def shard_path(self, i: int) -> Path:
        return self.path / f"part-{i:05d}.parquet"

    def done(self) -> set[int]:
        return {int(f.stem.split("-")[1]) for f in self.path.glob("part-*.parquet")}

    def write_shard(self, i: int, rows: Sequence[dict]) -> None:
        import pyarrow.parquet as pq

        tmp = self.path / f".part-{i:05d}.parquet.tmp"
        pq.write_table(rows_table(rows, self.metrics, self.keep), tmp)
        os.replace(tmp, self.shard_path(i))

    def read_all(self):
        """Every finished shard as one table, in shard order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = sorted(self.path.glob("part-*.parquet"))
        return pa.concat_tables([pq.read_table(f) for f in files]) if files else rows_table([], self.metrics)
