"""Where `icthp score` rows go: one interface over every output (JSONL, CSV, one parquet file, a folder of shards).

`open_sink` checks the output *before any model loads* (writable, not overwritten without `overwrite`, resumable
with this run's metrics and kept columns, `retry_errors` applied) and returns a `Sink`:

- `done_keys()`: the (image, prompt) keys already written (file outputs resume row by row);
- `done_shards()`: the shards already written (a folder output resumes shard by shard);
- `write(shard, rows, complete)`: rows of shard `shard`; a file writes (and flushes) them at once, a folder writes
  a shard's part file when `complete` is True;
- `close()`.

Every row passes through `rows.finish_row` first, so every sink writes the same columns and the same policy for
non-finite scores, kept columns and file names (see `icthp_core.data.rows`, `outputs` and `parquet_out`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from icthp_core.data.rows import finish_row
from icthp_core.errors import OutputError

Key = tuple[str, str]
KINDS = ("jsonl", "csv", "parquet", "folder")


class Sink(Protocol):
    #: True: `write` stores rows at once (any order); False: only whole shards, in row order
    streaming: bool

    def done_keys(self) -> set[Key]: ...

    def done_shards(self) -> set[int]: ...

    def write(self, shard: int, rows: Sequence[dict], complete: bool) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SinkOptions:
    """How a run treats its output: continue it (`resume`), score its error rows again (`retry_errors`, with
    `resume`), or replace it (`overwrite`)."""

    resume: bool = False
    retry_errors: bool = False
    overwrite: bool = False


def sink_kind(output: str | os.PathLike) -> str:
    """'jsonl', 'csv', 'parquet' or 'folder' (an existing folder, a path ending in '/', or without a suffix)."""
    s = os.fspath(output)
    p = Path(s)
    if p.is_dir() or s.endswith(("/", os.sep)) or not p.suffix:
        return "folder"
    suffix = p.suffix.lower()
    kinds = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
    if suffix not in kinds:
        raise OutputError(
            f"--output {s}: unsupported file type {suffix!r} (use .jsonl, .csv, .parquet or a folder for shards)"
        )
    return kinds[suffix]


class NullSink:
    """No --output: rows are only counted and shown."""

    streaming = True

    def done_keys(self) -> set[Key]:
        return set()

    def done_shards(self) -> set[int]:
        return set()

    def write(self, shard: int, rows: Sequence[dict], complete: bool) -> None:
        pass

    def close(self) -> None:
        pass


class FileSink:
    """One `.jsonl`, `.csv` or `.parquet` file, appended to and flushed at every write; resumes row by row."""

    streaming = True

    def __init__(self, writer, metrics: Sequence[str], keep: Sequence[str], done: set[Key]):
        self.writer, self.metrics, self.keep, self._done = writer, list(metrics), list(keep), done

    def done_keys(self) -> set[Key]:
        return self._done

    def done_shards(self) -> set[int]:
        return set()

    def write(self, shard: int, rows: Sequence[dict], complete: bool) -> None:
        if rows:
            self.writer.write([finish_row(r, self.metrics, self.keep) for r in rows])

    def close(self) -> None:
        self.writer.close()


class FolderSink:
    """A folder of `part-NNNNN.parquet` files, one per shard, written when the shard is complete."""

    streaming = False

    def __init__(self, shard_dir, metrics: Sequence[str], keep: Sequence[str]):
        self.dir, self.metrics, self.keep = shard_dir, list(metrics), list(keep)
        self._pending: dict[int, list[dict]] = {}

    def done_keys(self) -> set[Key]:
        return set()

    def done_shards(self) -> set[int]:
        return self.dir.done()

    def write(self, shard: int, rows: Sequence[dict], complete: bool) -> None:
        got = self._pending.setdefault(shard, [])
        got += [finish_row(r, self.metrics, self.keep) for r in rows]
        if complete:
            self.dir.write_shard(shard, self._pending.pop(shard))

    def close(self) -> None:
        self._pending.clear()  # an incomplete shard is never written: a resumed run scores it again


def _exists(path: Path, kind: str) -> bool:
    if kind == "folder":
        return path.is_dir() and any(path.glob("part-*.parquet"))
    parts = path.with_name(f".{path.name}.parts")
    return (path.exists() and path.stat().st_size > 0) or (kind == "parquet" and parts.is_dir())


def open_sink(
    output: str | os.PathLike | None,
    metrics: Sequence[str],
    keep: Sequence[str] = (),
    options: SinkOptions = SinkOptions(),
    fingerprint: str = "",
    num_shards: int = 0,
    log=None,
) -> Sink:
    """The sink of `output` (None: no file), checked and prepared for this run (see the module docstring).

    Args:
        output: a .jsonl/.csv/.parquet path, a folder, or None.
        metrics: the metric columns of this run.
        keep: kept input columns (written as text after `prompt`).
        options: resume / retry_errors / overwrite.
        fingerprint: the plan's fingerprint (a folder output refuses another plan).
        num_shards: number of shards of the plan (recorded in a folder's manifest).
        log: called with one line of information (e.g. how many rows a resumed output holds).
    """
    if output is None:
        return NullSink()
    kind, path = sink_kind(output), Path(output)
    if _exists(path, kind) and not (options.resume or options.overwrite):
        raise OutputError(f"{path} exists; pass --resume to continue it or --overwrite")
    if kind == "folder":
        from icthp_core.data.parquet_out import ShardDir

        shard_dir = ShardDir(
            path, fingerprint, num_shards, metrics, keep, options.overwrite and not options.resume, options.retry_errors
        )
        if options.resume and log is not None:
            log(f"resume: {len(shard_dir.done())} of {num_shards} shards already in {path}")
        return FolderSink(shard_dir, metrics, keep)
    from icthp_core.data.outputs import check_writable

    check_writable(path)
    if kind == "parquet":
        from icthp_core.data.parquet_out import ParquetScoreFile

        writer = ParquetScoreFile(path, metrics, keep, resume=options.resume, retry_errors=options.retry_errors)
        done = writer.done
    else:
        from icthp_core.data.outputs import ScoreWriter, item_image, prepare_resume

        held = prepare_resume(path, metrics, options.retry_errors, keep) if options.resume else set()
        done = {(str(item_image(image, path)), prompt) for image, prompt in held}  # paths as the items name them
        writer = ScoreWriter(path, metrics, append=options.resume, keep=keep)
    if options.resume and log is not None:
        log(f"resume: {len(done)} rows already in {path}")
    return FileSink(writer, metrics, keep, done)
