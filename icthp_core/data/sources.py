"""Data sources for batch scoring: image files, parquet (bytes or paths), WebDataset tars, Hugging Face datasets.

Every source is planned into *shards* (small JSON-able dicts: a list of files, a parquet row group, a tar file, a row
range of a datasets arrow file). `iter_shard(spec)` streams a shard's *records*
`{"image": id, "prompt": str|None, "path": str|None, "data": bytes|None, **kept columns}` (parquet by record batch,
WebDataset member by member: `icthp_core.data.webdataset`; `read_shard` is its list), and `decode_records` turns
records into normalised pixels (one entry per preprocessing mode) plus per-record errors, decoding every image with
`icthp_core.data.images.decode_image` (the one decoder: same limits and policy as files, uploads and requests).
The single-process and the Ray engine run the same functions, so they score the same pixels.

Record ids (`image`) are stable: the file path; `<file>#<row>:<column>` for parquet and datasets rows;
`<tar>#<key>` for WebDataset samples.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from icthp_core.data.images import DecodePolicy, decode_image
from icthp_core.data.prompts import PROMPT_COLUMNS
from icthp_core.data.webdataset import WDS_SUFFIXES, is_wds_name
from icthp_core.errors import ConfigError, DataError, ImageLoadError

IMAGE_COLUMN_CANDIDATES = ("image", "img", "jpg", "png", "webp", "image_bytes", "image_path", "file_name", "path")
PICKAPIC_COLUMNS = ("jpg_0", "jpg_1")
DATASET_KINDS = ("auto", "parquet", "webdataset", "hf")


# ---------------------------------------------------------------------------------------------------- detection
def detect_kind(source: str) -> str:
    """'parquet', 'webdataset' or 'hf' for a path (file or folder) or a hub id."""
    if source.startswith("hf:"):
        return "hf"
    p = Path(source)
    if p.is_file():
        if p.suffix.lower() == ".parquet":
            return "parquet"
        if is_wds_name(p.name):
            return "webdataset"
        raise DataError(f"--dataset {source}: unknown file type {p.suffix!r} (.parquet, {', '.join(WDS_SUFFIXES)})")
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "state.json").exists() or (p / "dataset_dict.json").exists():
            return "hf"
        if any(p.glob("*.parquet")):
            return "parquet"
        if _wds_files(p):
            return "webdataset"
        raise DataError(f"--dataset {source}: folder has no *.parquet, *.tar or datasets save_to_disk files")
    if "/" in source and not source.startswith((".", "/")):
        return "hf"  # looks like a hub id
    raise DataError(f"--dataset {source}: no such file or folder")


def _files(source: str, suffix: str) -> list[Path]:
    p = Path(source)
    return sorted(p.glob(f"*{suffix}")) if p.is_dir() else [p]


def _wds_files(p: Path) -> list[Path]:
    """The WebDataset shards of a folder (sorted), or the file itself."""
    return sorted(f for f in p.iterdir() if f.is_file() and is_wds_name(f.name)) if p.is_dir() else [p]


def _split_cols(value: str | None) -> list[str]:
    return [c.strip() for c in (value or "").split(",") if c.strip()]


def _choose_columns(
    names: Sequence[str], image_column: str | None, prompt_column: str | None, keep: Sequence[str], where: str
) -> tuple[list[str], str | None]:
    names = list(names)
    images = _split_cols(image_column)
    if not images:
        if all(c in names for c in PICKAPIC_COLUMNS):
            images = list(PICKAPIC_COLUMNS)
        else:
            images = [next((c for c in IMAGE_COLUMN_CANDIDATES if c in names), None)]
            if images[0] is None:
                raise DataError(f"{where}: no image column found in {names}; pass --image-column")
    if prompt_column is None:
        prompt_column = next((c for c in PROMPT_COLUMNS if c in names), None)
    for c in [*images, *([prompt_column] if prompt_column else []), *keep]:
        if c not in names:
            raise DataError(f"{where}: no column {c!r}; columns are {names}")
    return images, prompt_column


# ---------------------------------------------------------------------------------------------------- planning
def plan_files(items: Sequence[tuple[str, str | None]], shard_size: int) -> list[dict]:
    """Shards of `shard_size` (image path, prompt) items."""
    return [
        {"kind": "files", "items": [list(it) for it in items[s : s + shard_size]]}
        for s in range(0, len(items), shard_size)
    ]


def plan_dataset(
    source: str,
    kind: str = "auto",
    image_column: str | None = None,
    prompt_column: str | None = None,
    keep_columns: Sequence[str] = (),
    split: str = "train",
    shard_size: int = 256,
    prompt: str | None = None,
) -> list[dict]:
    """Shards of one dataset source; column names are checked here (one clear error, before any work)."""
    kind = detect_kind(source) if kind == "auto" else kind
    keep = list(keep_columns)
    common = {"prompt": prompt, "keep": keep}
    if kind == "parquet":
        import pyarrow.parquet as pq

        shards = []
        for f in _files(source, ".parquet"):
            try:
                meta = pq.ParquetFile(f)
            except Exception as e:
                raise DataError(f"--dataset {f}: not a readable parquet file ({e})") from None
            images, pcol = _choose_columns(meta.schema_arrow.names, image_column, prompt_column, keep, str(f))
            start = 0
            for g in range(meta.num_row_groups):
                n = meta.metadata.row_group(g).num_rows
                shards.append(
                    {"kind": "parquet", "file": str(f), "row_group": g, "start": start, "images": images}
                    | {"prompt_column": pcol}
                    | common
                )
                start += n
        return shards
    if kind == "webdataset":
        files = _wds_files(Path(source))
        if not files:
            raise DataError(f"--dataset {source}: no {', '.join(WDS_SUFFIXES)} shards")
        return [{"kind": "tar", "file": str(f)} | common for f in files]
    if kind == "hf":
        return _plan_hf(source, image_column, prompt_column, keep, split, shard_size, common)
    raise ConfigError(f"--dataset-format {kind!r}: choose from {DATASET_KINDS}")


def _plan_hf(source, image_column, prompt_column, keep, split, shard_size, common) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise ConfigError("Hugging Face datasets need `pip install datasets` (or icthp[scale])") from None
    name = source.removeprefix("hf:")
    if Path(name).is_dir():
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"--dataset {name}: no split {split!r}; splits are {list(ds)}")
            ds = ds[split]
    else:
        ds = datasets.load_dataset(name, split=split)
    if ds._indices is not None:
        ds = ds.flatten_indices()  # a selected/shuffled view: materialise it so arrow files match rows
    if image_column is None:  # a datasets Image feature is the image column
        image_column = next((c for c, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    images, pcol = _choose_columns(ds.column_names, image_column, prompt_column, keep, f"--dataset {name}")
    shards = []
    for cf in ds.cache_files:
        import pyarrow as pa

        with pa.memory_map(cf["filename"]) as mm:
            n = pa.ipc.open_stream(mm).read_all().num_rows
        for s in range(0, n, shard_size):
            shards.append(
                {"kind": "arrow", "file": cf["filename"], "name": name, "start": s, "stop": min(s + shard_size, n)}
                | {"images": images, "prompt_column": pcol}
                | common
            )
    if not shards:
        raise DataError(f"--dataset {name}: no arrow files behind this dataset (in-memory datasets are not supported)")
    return shards


# ---------------------------------------------------------------------------------------------------- reading
#: bytes (uncompressed, estimated from the row group's metadata) per pyarrow record batch of a parquet row group
READ_BATCH_BYTES = 8 << 20
#: rows per record batch at most (parquet and datasets arrow files)
READ_BATCH_ROWS = 64


def _cell(value, base: Path) -> tuple[str | None, bytes | None]:
    """(path, data) from a cell: bytes, a datasets Image struct {bytes, path}, or a path string."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return None, bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None, bytes(value)
    if isinstance(value, str) and value:
        p = value if os.path.isabs(value) or os.path.exists(value) else str(base / value)
        return p, None
    return None, None


def _table_records(table, shard: dict, start: int, label: str) -> Iterator[dict]:
    """Records of a pyarrow table or record batch whose first row is row `start` of the source."""
    base = Path(shard["file"]).parent
    cols = {c: table.column(c).to_pylist() for c in {*shard["images"], *shard["keep"]}}
    prompts = table.column(shard["prompt_column"]).to_pylist() if shard.get("prompt_column") else None
    for i in range(table.num_rows):
        prompt = shard["prompt"] if shard["prompt"] is not None else (prompts[i] if prompts else None)
        for c in shard["images"]:
            path, data = _cell(cols[c][i], base)
            rec = {"image": f"{label}#{start + i}:{c}", "prompt": prompt, "path": path, "data": data}
            rec.update({k: cols[k][i] for k in shard["keep"]})
            yield rec


def _parquet_records(shard: dict) -> Iterator[dict]:
    """One row group, read in record batches of ~READ_BATCH_BYTES (never the whole file or row group)."""
    import pyarrow.parquet as pq

    cols = list(dict.fromkeys([*shard["images"], *shard["keep"], *filter(None, [shard.get("prompt_column")])]))
    start = shard["start"]
    with pq.ParquetFile(shard["file"], buffer_size=1 << 20, pre_buffer=False) as pf:
        group = pf.metadata.row_group(shard["row_group"])
        row_bytes = group.total_byte_size / max(group.num_rows, 1)
        rows = int(min(max(READ_BATCH_BYTES // max(row_bytes, 1), 1), READ_BATCH_ROWS))
        for batch in pf.iter_batches(batch_size=rows, row_groups=[shard["row_group"]], columns=cols):
            yield from _table_records(batch, shard, start, shard["file"])
            start += batch.num_rows


def _arrow_records(shard: dict) -> Iterator[dict]:
    """A row range of a datasets arrow file (memory-mapped; rows materialised READ_BATCH_ROWS at a time)."""
    import pyarrow as pa

    with pa.memory_map(shard["file"]) as mm:
        table = pa.ipc.open_stream(mm).read_all().slice(shard["start"], shard["stop"] - shard["start"])
        start = shard["start"]
        for batch in table.to_batches(max_chunksize=READ_BATCH_ROWS):
            yield from _table_records(batch, shard, start, shard["name"])
            start += batch.num_rows


def read_shard(shard: dict) -> list[dict]:
    """The records of one shard (see the module docstring); image bytes are not decoded here."""
    return list(iter_shard(shard))


def iter_shard(shard: dict) -> Iterator[dict]:
    """The records of one shard, streamed: parquet by record batch, WebDataset member by member."""
    kind = shard["kind"]
    if kind == "files":
        yield from ({"image": p, "prompt": q, "path": p, "data": None} for p, q in shard["items"])
    elif kind == "parquet":
        yield from _parquet_records(shard)
    elif kind == "arrow":
        yield from _arrow_records(shard)
    elif kind == "tar":
        from icthp_core.data.webdataset import tar_records

        yield from tar_records(shard["file"], shard["prompt"], shard["keep"])
    else:
        raise ValueError(f"unknown shard kind {kind!r}")


# ---------------------------------------------------------------------------------------------------- decoding
def record_image(rec: dict, policy: str | DecodePolicy = DecodePolicy.VIEW) -> Image.Image:
    """The decoded image of a record (file path or bytes) through `decode_image`, named by the record id."""
    if rec.get("data") is not None:
        return decode_image(rec["data"], name=rec["image"], policy=policy)
    if rec.get("path"):
        return decode_image(rec["path"], name=rec["image"] if rec["image"] != rec["path"] else None, policy=policy)
    raise ImageLoadError(f"{rec['image']}: no image (empty cell)")


def decode_records(
    records: Sequence[dict], modes: Sequence[str], policy: str | DecodePolicy = DecodePolicy.VIEW
) -> tuple[list[str | None], dict[str, np.ndarray]]:
    """Per-record errors (None = decoded) and pixels {mode: float32 [n,3,S,S]} (zeros for failed records).

    `policy`: the decode policy (`icthp_core.data.images.DecodePolicy`); every record goes through `decode_image`.
    """
    from icthp_core.data.preprocess import MODE_SIZE, preprocess_pil

    errors: list[str | None] = []
    pixels = {m: np.zeros((len(records), 3, MODE_SIZE[m], MODE_SIZE[m]), np.float32) for m in modes}
    for i, rec in enumerate(records):
        if rec.get("error"):
            errors.append(rec["error"])
            continue
        try:
            img = record_image(rec, policy)
            for m in modes:
                pixels[m][i] = preprocess_pil(img, m, policy=policy).numpy()
            errors.append(None)
        except ImageLoadError as e:
            errors.append(str(e))
        except Exception as e:  # noqa: BLE001 - one bad image is that record's error row, never the run's
            errors.append(f"{rec['image']}: cannot preprocess image ({type(e).__name__}: {e})")
    return errors, pixels


def iter_record_batches(shard: dict, batch_size: int) -> Iterator[list[dict]]:
    """The records of one shard in lists of at most `batch_size`, streamed (memory: one list, not the shard)."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    chunk: list[dict] = []
    for rec in iter_shard(shard):
        chunk.append(rec)
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def iter_records(shards: Sequence[dict]) -> Iterator[dict]:
    for shard in shards:
        yield from iter_shard(shard)
