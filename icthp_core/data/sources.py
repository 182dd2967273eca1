"""Data sources for batch scoring: image files, parquet (bytes or paths), WebDataset tars, Hugging Face datasets.

Every source is planned into *shards* (small JSON-able dicts: a list of files, a parquet row group, a tar file, a row
range of a datasets arrow file). `read_shard(spec)` turns a shard into *records*
`{"image": id, "prompt": str|None, "path": str|None, "data": bytes|None, **kept columns}`, and `decode_records` turns
records into normalised pixels (one entry per preprocessing mode) plus per-record errors. The single-process and the
Ray engine run the same three functions, so they score the same pixels.

Record ids (`image`) are stable: the file path; `<file>#<row>:<column>` for parquet and datasets rows;
`<tar>#<key>` for WebDataset samples.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from icthp_core.errors import ImageLoadError

IMAGE_COLUMN_CANDIDATES = ("image", "img", "jpg", "png", "webp", "image_bytes", "image_path", "file_name", "path")
PROMPT_COLUMN_CANDIDATES = ("prompt", "caption", "text", "txt")
PICKAPIC_COLUMNS = ("jpg_0", "jpg_1")
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
WDS_TEXT_EXTS = ("txt", "caption", "prompt")
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
        if p.suffix.lower() == ".tar":
            return "webdataset"
        raise ValueError(f"--dataset {source}: unknown file type {p.suffix!r} (.parquet or .tar)")
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "state.json").exists() or (p / "dataset_dict.json").exists():
            return "hf"
        if any(p.glob("*.parquet")):
            return "parquet"
        if any(p.glob("*.tar")):
            return "webdataset"
        raise ValueError(f"--dataset {source}: folder has no *.parquet, *.tar or datasets save_to_disk files")
    if "/" in source and not source.startswith((".", "/")):
        return "hf"  # looks like a hub id
    raise ValueError(f"--dataset {source}: no such file or folder")


def _files(source: str, suffix: str) -> list[Path]:
    p = Path(source)
    return sorted(p.glob(f"*{suffix}")) if p.is_dir() else [p]


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
                raise ValueError(f"{where}: no image column found in {names}; pass --image-column")
    if prompt_column is None:
        prompt_column = next((c for c in PROMPT_COLUMN_CANDIDATES if c in names), None)
    for c in [*images, *([prompt_column] if prompt_column else []), *keep]:
        if c not in names:
            raise ValueError(f"{where}: no column {c!r}; columns are {names}")
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
                raise ValueError(f"--dataset {f}: not a readable parquet file ({e})") from None
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
        files = _files(source, ".tar")
        if not files:
            raise ValueError(f"--dataset {source}: no .tar shards")
        return [{"kind": "tar", "file": str(f)} | common for f in files]
    if kind == "hf":
        return _plan_hf(source, image_column, prompt_column, keep, split, shard_size, common)
    raise ValueError(f"--dataset-format {kind!r}: choose from {DATASET_KINDS}")


def _plan_hf(source, image_column, prompt_column, keep, split, shard_size, common) -> list[dict]:
    try:
        import datasets
    except ImportError:
        raise ValueError("Hugging Face datasets need `pip install datasets` (or icthp[scale])") from None
    name = source.removeprefix("hf:")
    if Path(name).is_dir():
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"--dataset {name}: no split {split!r}; splits are {list(ds)}")
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
        raise ValueError(f"--dataset {name}: no arrow files behind this dataset (in-memory datasets are not supported)")
    return shards


# ---------------------------------------------------------------------------------------------------- reading
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


def _table_records(table, shard: dict, start: int, label: str) -> list[dict]:
    base = Path(shard["file"]).parent
    cols = {c: table.column(c).to_pylist() for c in {*shard["images"], *shard["keep"]}}
    prompts = table.column(shard["prompt_column"]).to_pylist() if shard.get("prompt_column") else None
    out = []
    for i in range(table.num_rows):
        prompt = shard["prompt"] if shard["prompt"] is not None else (prompts[i] if prompts else None)
        for c in shard["images"]:
            path, data = _cell(cols[c][i], base)
            rec = {"image": f"{label}#{start + i}:{c}", "prompt": prompt, "path": path, "data": data}
            rec.update({k: cols[k][i] for k in shard["keep"]})
            out.append(rec)
    return out


def _tar_records(shard: dict) -> list[dict]:
    samples: dict[str, dict] = {}
    with tarfile.open(shard["file"]) as tf:
        for m in tf:
            if not m.isfile():
                continue
            name = m.name
            key, dot, ext = name.partition(".")
            if not dot or os.path.basename(key).startswith("."):
                continue
            samples.setdefault(key, {})[ext.lower()] = tf.extractfile(m).read()
    out = []
    for key, parts in samples.items():
        img_ext = next((e for e in WDS_IMAGE_EXTS if e in parts), None)
        prompt = shard["prompt"]
        meta = {}
        if "json" in parts:
            try:
                meta = json.loads(parts["json"])
            except (json.JSONDecodeError, UnicodeDecodeError):
                meta = {}
        if prompt is None:
            txt = next((parts[e] for e in WDS_TEXT_EXTS if e in parts), None)
            if txt is not None:
                prompt = txt.decode("utf-8", "replace").strip()
            elif isinstance(meta, dict):
                prompt = next((meta[k] for k in PROMPT_COLUMN_CANDIDATES if isinstance(meta.get(k), str)), None)
        rec = {"image": f"{shard['file']}#{key}", "prompt": prompt, "path": None, "data": parts.get(img_ext)}
        if img_ext is None:
            rec["error"] = f"{shard['file']}#{key}: no image member (.{'/.'.join(WDS_IMAGE_EXTS)})"
        rec.update({k: meta.get(k) if isinstance(meta, dict) else None for k in shard["keep"]})
        out.append(rec)
    return out


def read_shard(shard: dict) -> list[dict]:
    """The records of one shard (see the module docstring); image bytes are not decoded here."""
    kind = shard["kind"]
    if kind == "files":
        return [{"image": p, "prompt": q, "path": p, "data": None} for p, q in shard["items"]]
    if kind == "parquet":
        import pyarrow.parquet as pq

        cols = list(dict.fromkeys([*shard["images"], *shard["keep"], *filter(None, [shard.get("prompt_column")])]))
        table = pq.ParquetFile(shard["file"]).read_row_group(shard["row_group"], columns=cols)
        return _table_records(table, shard, shard["start"], shard["file"])
    if kind == "arrow":
        import pyarrow as pa

        with pa.memory_map(shard["file"]) as mm:
            table = pa.ipc.open_stream(mm).read_all().slice(shard["start"], shard["stop"] - shard["start"])
        return _table_records(table, shard, shard["start"], shard["name"])
    if kind == "tar":
        return _tar_records(shard)
    raise ValueError(f"unknown shard kind {kind!r}")


# ---------------------------------------------------------------------------------------------------- decoding
def decode_bytes(data: bytes, where: str):
    """Fully decode encoded image bytes as RGB; ImageLoadError naming `where` on failure."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageLoadError(f"{where}: empty image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise ImageLoadError(f"{where}: cannot decode image (not a known image format)") from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise ImageLoadError(f"{where}: cannot decode image ({type(e).__name__}: {e})") from e


def record_image(rec: dict):
    """The RGB PIL image of a record (file path or bytes)."""
    from icthp_core.data.images import load_image

    if rec.get("data") is not None:
        return decode_bytes(rec["data"], rec["image"])
    if rec.get("path"):
        return load_image(rec["path"])
    raise ImageLoadError(f"{rec['image']}: no image (empty cell)")


def decode_records(records: Sequence[dict], modes: Sequence[str]) -> tuple[list[str | None], dict[str, np.ndarray]]:
    """Per-record errors (None = decoded) and pixels {mode: float32 [n,3,224,224]} (zeros for failed records)."""
    from icthp_core.scoring.preprocess import preprocess_pil

    errors: list[str | None] = []
    pixels = {m: np.zeros((len(records), 3, 224, 224), np.float32) for m in modes}
    for i, rec in enumerate(records):
        if rec.get("error"):
            errors.append(rec["error"])
            continue
        try:
            img = record_image(rec)
            for m in modes:
                pixels[m][i] = preprocess_pil(img, m).numpy()
            errors.append(None)
        except ImageLoadError as e:
            errors.append(str(e))
    return errors, pixels


def iter_records(shards: Sequence[dict]) -> Iterator[dict]:
    for shard in shards:
        yield from read_shard(shard)
