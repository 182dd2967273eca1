"""Preference data: Pick-High triplets, Pick-a-Pic v2 style pairs and plain JSONL/CSV/parquet tables.

Formats (one row per example; a table is `.jsonl`, `.json` (JSON lines), `.csv` or `.parquet`):

- Triplets: `easy_prompt`, `refine_prompt`, `image_1` (Pick-a-Pic loser), `image_2` (winner),
  `image_3` (image of the refined prompt), optional ICT labels `E1`, `E2`, `R1`, `R2`.
  Pick-High's own column names
  (`easy_image_0`, `easy_image_1`, `refine_image`) are accepted too.
- Pairs: `prompt` (or `caption`), `image_0`, `image_1` (or `jpg_0`, `jpg_1`),
  `label_0` (1 = image_0 preferred, 0.5 = tie; `label_1` alone is accepted as 1 - label_0).

An image cell is a path (absolute, or relative to `image_root`, default the table's folder), raw encoded
bytes, or a `{"bytes": ..., "path": ...}` dict (Hugging Face `datasets` parquet).

Pick-High is published as pickled pandas DataFrames (`Pick-High/{split}.pkl`) + `pick_easy_img/{split}/`,
`pick_refine_img/{split}/`. Unpickling runs arbitrary code, so it is read only with `trust_pickle=True`;
:func:`convert_pick_high` turns it once into JSONL/parquet that loads by default.

Bad rows (missing prompt or image, unreadable image, NaN label) are skipped and counted in a
:class:`LoadReport`; an image that fails to decode later during training is replaced by the next example and
counted too, so a run never crashes on data.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from icthp_core.data.images import check_image, decode_image
from icthp_core.errors import ConfigError, DataError, DataFormatError, MissingFileError, UnsafeDataError

logger = logging.getLogger(__name__)

__all__ = [
    "UnsafeDataError",
    "DataFormatError",
    "LoadReport",
    "TripletRecord",
    "PairRecord",
    "read_table",
    "load_triplets",
    "load_pairs",
    "detect_kind",
    "load_pick_high_pickle",
    "convert_pick_high",
    "open_image",
    "TripletDataset",
    "PairDataset",
    "collate",
    "write_triplets",
]

TRIPLET_ALIASES = {"easy_image_0": "image_1", "easy_image_1": "image_2", "refine_image": "image_3"}
PAIR_ALIASES = {"caption": "prompt", "jpg_0": "image_0", "jpg_1": "image_1"}
LABEL_KEYS = ("E1", "E2", "R1", "R2")
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")

ImageRef = str | bytes


@dataclass
class LoadReport:
    """What a loader kept and skipped (and why)."""

    source: str
    total: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    decode_failures: int = 0
    max_examples: int = 20

    def skip(self, row: int, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(f"row {row}: {reason}" + (f" ({detail})" if detail else ""))

    def summary(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        s = f"{self.source}: kept {self.kept}/{self.total} rows; skipped: {parts}"
        if self.decode_failures:
            s += f"; images that failed to decode during use: {self.decode_failures}"
        return s

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "total": self.total,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "examples": list(self.examples),
            "decode_failures": self.decode_failures,
        }


@dataclass
class TripletRecord:
    easy_prompt: str
    refine_prompt: str
    images: tuple[ImageRef, ImageRef, ImageRef]  # (I1 loser, I2 winner, I3 refined)
    labels: dict[str, float] | None = None  # E1, E2, R1, R2


@dataclass
class PairRecord:
    prompt: str
    images: tuple[ImageRef, ImageRef]
    label_0: float  # 1: image_0 preferred, 0: image_1 preferred, 0.5: tie


# ----------------------------------------------------------------------------------------------- tables


def load_pick_high_pickle(path: str | os.PathLike, trust_pickle: bool = False):
    """Read a Pick-High `{split}.pkl` (a pickled pandas DataFrame). Unpickling can run arbitrary code."""
    if not trust_pickle:
        raise UnsafeDataError(
            f"{path}: refusing to unpickle (pickle can run arbitrary code). If you trust this file, pass "
            "trust_pickle=True (CLI: --trust-pickle), or better convert it once with "
            "`icthp convert-pick-high --trust-pickle SRC -o OUT` and load the converted JSONL/parquet."
        )
    import pandas as pd

    df = pd.read_pickle(path)
    if not isinstance(df, pd.DataFrame):
        raise DataFormatError(f"{path}: expected a pickled pandas DataFrame, got {type(df).__name__}")
    return df


def read_table(path: str | os.PathLike, trust_pickle: bool = False):
    """A pandas DataFrame from `.jsonl`/`.json`/`.csv`/`.parquet` (or `.pkl` with `trust_pickle`)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"data file not found: {p}")
    suf = p.suffix.lower()
    if suf in (".pkl", ".pickle"):
        return load_pick_high_pickle(p, trust_pickle)
    if suf in (".jsonl", ".json"):
        return pd.read_json(p, lines=True, dtype=False, precise_float=True)
    if suf == ".csv":
        return pd.read_csv(p, keep_default_na=True)
    if suf == ".parquet":
        return pd.read_parquet(p)
    raise DataFormatError(f"{p}: unknown data format {suf!r} (use one of {TABLE_SUFFIXES} or .pkl)")


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and not v.strip()


def _image_ref(v: Any, root: Path) -> tuple[ImageRef | None, str]:
    """(ref, problem) for one image cell; ref None when unusable."""
    if isinstance(v, dict):
        b, p = v.get("bytes"), v.get("path")
        v = b if b is not None and len(b) else p
    if isinstance(v, bytearray | memoryview):
        v = bytes(v)
    if isinstance(v, bytes):
        return (v, "") if v else (None, "empty_image_bytes")
    if _missing(v):
        return None, "missing_image"
    if not isinstance(v, str):
        return None, "bad_image_cell"
    p = Path(v)
    if not p.is_absolute():
        p = root / p
    if not p.is_file():
        return None, "image_not_found"
    return str(p), ""


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _verify(ref: ImageRef) -> str:
    """Why `ref` cannot be decoded (the one decoder, its limits included), or "" when it can."""
    return check_image(ref, name="<image bytes>" if isinstance(ref, bytes) else None) or ""


def _pick_high_roots(path: Path, image_root: Path | None, split: str) -> tuple[Path, Path]:
    root = image_root or path.parent.parent
    return root / "pick_easy_img" / split, root / "pick_refine_img" / split


def load_triplets(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    trust_pickle: bool = False,
    require_labels: bool = False,
    verify_images: bool = False,
    limit: int | None = None,
    use_labels: bool = True,
) -> tuple[list[TripletRecord], LoadReport]:
    """Triplet records from a table (see module doc) or a Pick-High pickle (with `trust_pickle`).

    For Pick-High column names, image cells are file names under `<root>/pick_easy_img/<split>/` and
    `<root>/pick_refine_img/<split>/`, `<root>` = `image_root` or the folder above `Pick-High/`.
    `use_labels=False` ignores label columns (no row is skipped for a NaN label): for evaluation and the HP
    stage, which do not need labels.
    """
    p = Path(path)
    df = read_table(p, trust_pickle=trust_pickle)
    pick_high = "easy_image_0" in df.columns
    df = df.rename(columns={k: v for k, v in TRIPLET_ALIASES.items() if k in df.columns})
    need = ("easy_prompt", "refine_prompt", "image_1", "image_2", "image_3")
    miss = [c for c in need if c not in df.columns]
    if miss:
        raise DataFormatError(f"{p}: missing triplet columns {miss}; has {list(df.columns)}")
    has_labels = use_labels and all(k in df.columns for k in LABEL_KEYS)
    if require_labels and not has_labels:
        raise DataFormatError(f"{p}: ICT labels {list(LABEL_KEYS)} required but absent (build them first)")
    if pick_high:
        easy_root, ref_root = _pick_high_roots(p, Path(image_root) if image_root else None, p.stem)
        roots = (easy_root, easy_root, ref_root)
    else:
        r = Path(image_root) if image_root else p.parent
        roots = (r, r, r)
    report = LoadReport(source=str(p))
    records: list[TripletRecord] = []
    for i, row in enumerate(df.to_dict("records")):
        if limit is not None and len(records) >= limit:
            break
        report.total += 1
        if _missing(row["easy_prompt"]) or _missing(row["refine_prompt"]):
            report.skip(i, "missing_prompt")
            continue
        refs, problem = [], ""
        for col, root in zip(("image_1", "image_2", "image_3"), roots, strict=True):
            ref, problem = _image_ref(row[col], root)
            if ref is None:
                report.skip(i, problem, f"{col}={row[col]!r}"[:200])
                break
            refs.append(ref)
        if len(refs) < 3:
            continue
        labels = None
        if has_labels:
            vals = {k: _float(row[k]) for k in LABEL_KEYS}
            bad = [k for k, v in vals.items() if v is None]
            if bad:
                report.skip(i, "nan_label", ",".join(bad))
                continue
            labels = vals
        if verify_images:
            err = next((e for e in map(_verify, refs) if e), "")
            if err:
                report.skip(i, "unreadable_image", err[:200])
                continue
        records.append(TripletRecord(str(row["easy_prompt"]), str(row["refine_prompt"]), tuple(refs), labels))
        report.kept += 1
    _log_report(report)
    return records, report


def load_pairs(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    verify_images: bool = False,
    limit: int | None = None,
) -> tuple[list[PairRecord], LoadReport]:
    """Pair records from a Pick-a-Pic v2 style parquet or a plain table (see module doc)."""
    p = Path(path)
    df = read_table(p)
    df = df.rename(columns={k: v for k, v in PAIR_ALIASES.items() if k in df.columns and v not in df.columns})
    miss = [c for c in ("prompt", "image_0", "image_1") if c not in df.columns]
    if "label_0" not in df.columns and "label_1" not in df.columns:
        miss.append("label_0")
    if miss:
        raise DataFormatError(f"{p}: missing pair columns {miss}; has {list(df.columns)}")
    root = Path(image_root) if image_root else p.parent
    report = LoadReport(source=str(p))
    records: list[PairRecord] = []
    for i, row in enumerate(df.to_dict("records")):
        if limit is not None and len(records) >= limit:
            break
        report.total += 1
        if _missing(row["prompt"]):
            report.skip(i, "missing_prompt")
            continue
        lab = _float(row["label_0"]) if "label_0" in row else None
        if lab is None and "label_1" in row and _float(row["label_1"]) is not None:
            lab = 1.0 - _float(row["label_1"])
        if lab is None:
            report.skip(i, "nan_label")
            continue
        if not 0.0 <= lab <= 1.0:
            report.skip(i, "bad_label", str(lab))
            continue
        refs = []
        for col in ("image_0", "image_1"):
            ref, problem = _image_ref(row[col], root)
            if ref is None:
                report.skip(i, problem, f"{col}={str(row[col])[:120]!r}")
                break
            refs.append(ref)
        if len(refs) < 2:
            continue
        if verify_images:
            err = next((e for e in map(_verify, refs) if e), "")
            if err:
                report.skip(i, "unreadable_image", err[:200])
                continue
        records.append(PairRecord(str(row["prompt"]), tuple(refs), lab))
        report.kept += 1
    _log_report(report)
    return records, report


def detect_kind(path: str | os.PathLike, trust_pickle: bool = False) -> str:
    """ "triplets" or "pairs", from a table's columns."""
    cols = set(read_table(path, trust_pickle=trust_pickle).columns)
    if {"easy_prompt", "refine_prompt"} <= cols:
        return "triplets"
    if cols & {"label_0", "label_1"}:
        return "pairs"
    raise DataFormatError(f"{path}: cannot tell triplets from pairs by the columns {sorted(cols)}")


def _log_report(report: LoadReport) -> None:
    if sum(report.skipped.values()):
        logger.warning(report.summary())
    else:
        logger.info(report.summary())


# ----------------------------------------------------------------------------------------------- converter


def convert_pick_high(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    splits: Sequence[str] = ("train", "val", "test"),
    trust_pickle: bool = False,
    fmt: str = "jsonl",
    embed_images: bool = False,
) -> dict[str, Path]:
    """Convert Pick-High (`src/Pick-High/{split}.pkl` + image folders) once into safe tables in `out_dir`.

    `fmt="jsonl"` writes `{split}.jsonl` with image paths relative to `out_dir`; `fmt="parquet"` writes
    `{split}.parquet`, with the encoded image bytes inside when `embed_images`. Bad rows are skipped and
    reported in `{split}.report.json`. Returns {split: written table}.
    """
    import pandas as pd

    if fmt not in ("jsonl", "parquet"):
        raise ConfigError(f"--format {fmt!r}: expected 'jsonl' or 'parquet'")
    if embed_images and fmt != "parquet":
        raise ConfigError("--embed needs --format parquet (JSONL rows hold image paths)")
    src, out = Path(src), Path(out_dir)
    pkl_dir = src / "Pick-High" if (src / "Pick-High").is_dir() else src
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for split in splits:
        pkl = pkl_dir / f"{split}.pkl"
        if not pkl.is_file():
            logger.warning("convert_pick_high: %s not found, split skipped", pkl)
            continue
        records, report = load_triplets(pkl, image_root=pkl_dir.parent, trust_pickle=trust_pickle)
        rows = []
        for r in records:
            row: dict[str, Any] = {"easy_prompt": r.easy_prompt, "refine_prompt": r.refine_prompt}
            for k, ref in zip(("image_1", "image_2", "image_3"), r.images, strict=True):
                if embed_images:
                    row[k] = ref if isinstance(ref, bytes) else Path(ref).read_bytes()
                else:
                    row[k] = os.path.relpath(ref, out) if isinstance(ref, str) else ref
            if r.labels:
                row.update(r.labels)
            rows.append(row)
        target = out / f"{split}.{fmt}"
        if fmt == "jsonl":
            with open(target, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            pd.DataFrame(rows).to_parquet(target, index=False)
        (out / f"{split}.report.json").write_text(json.dumps(report.to_dict(), indent=2))
        written[split] = target
    return written


# ----------------------------------------------------------------------------------------------- datasets


def open_image(ref: ImageRef) -> Image.Image:
    """Decode an image reference (path or bytes) to an RGB PIL image (fully loaded; see `data.images`)."""
    return decode_image(ref)


class _RobustDataset(torch.utils.data.Dataset):
    """Replaces an example whose image fails to decode by the next one (counted in the report).

    `cache=True` keeps every decoded, preprocessed item in memory (small data sets and tests only).
    """

    def __init__(
        self,
        records: Sequence,
        transform: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        report: LoadReport | None = None,
        cache: bool = False,
    ):
        self.transform, self.tokenizer = transform, tokenizer
        if not records:
            why = f": {report.summary()}" if report else ""
            raise DataError("dataset is empty (every row was skipped?)" + why)
        self.records = list(records)
        self.report = report or LoadReport(source="<records>", total=len(records), kept=len(records))
        self.cache: dict[int, dict[str, Any]] | None = {} if cache else None

    def _cached_item(self, idx: int) -> dict[str, Any]:
        if self.cache is None:
            return self._item(idx)
        if idx not in self.cache:
            self.cache[idx] = self._item(idx)
        return dict(self.cache[idx])

    def __len__(self) -> int:
        return len(self.records)

    def _item(self, idx: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, idx: int) -> dict[str, Any]:
        n = len(self.records)
        for k in range(n):
            j = (idx + k) % n
            try:
                item = self._cached_item(j)
            except (OSError, ValueError, SyntaxError) as e:  # PIL decoder errors
                self.report.decode_failures += 1
                logger.warning("%s: example %d unreadable (%s); using the next one", self.report.source, j, e)
                continue
            item["index"] = torch.tensor(idx)
            return item
        raise DataError(f"{self.report.source}: no readable example left")


class TripletDataset(_RobustDataset):
    """Items: `pixels_1/2/3` [3,H,W], `easy_tokens`, `ref_tokens` [77], `labels_easy`, `labels_ref` [3]
    (NaN when the record has no labels), `index`."""

    def _item(self, idx: int) -> dict[str, Any]:
        r: TripletRecord = self.records[idx]
        item = {f"pixels_{k + 1}": self.transform(open_image(ref)) for k, ref in enumerate(r.images)}
        item["easy_tokens"] = self.tokenizer([r.easy_prompt])[0]
        item["ref_tokens"] = self.tokenizer([r.refine_prompt])[0]
        lab = r.labels
        nan = float("nan")
        item["labels_easy"] = torch.tensor([lab["E1"], lab["E2"], 1.0] if lab else [nan, nan, 1.0])
        item["labels_ref"] = torch.tensor([lab["R1"], lab["R2"], 1.0] if lab else [nan, nan, 1.0])
        return item


class PairDataset(_RobustDataset):
    """Items: `pixels_0`, `pixels_1` [3,H,W], `tokens` [77], `label_0` scalar, `index`."""

    def _item(self, idx: int) -> dict[str, Any]:
        r: PairRecord = self.records[idx]
        return {
            "pixels_0": self.transform(open_image(r.images[0])),
            "pixels_1": self.transform(open_image(r.images[1])),
            "tokens": self.tokenizer([r.prompt])[0],
            "label_0": torch.tensor(float(r.label_0)),
        }


def collate(batch: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack dataset items key by key."""
    return {k: torch.stack([b[k] for b in batch]) for k in batch[0]}


def write_triplets(records: Sequence[TripletRecord], path: str | os.PathLike) -> Path:
    """Write triplet records as `.jsonl` (image paths only) or `.parquet` (paths or bytes) with their labels.

    Image paths are written relative to the file's folder (see `icthp_core.data.paths`), as readers resolve them.
    """
    import pandas as pd

    from icthp_core.data.paths import portable

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in records:
        row: dict[str, Any] = {"easy_prompt": r.easy_prompt, "refine_prompt": r.refine_prompt}
        cells = [ref if isinstance(ref, bytes) else portable(ref, p.parent) for ref in r.images]
        row.update(dict(zip(("image_1", "image_2", "image_3"), cells, strict=True)))
        if r.labels:
            row.update(r.labels)
        rows.append(row)
    if p.suffix == ".jsonl":
        if any(isinstance(ref, bytes) for r in records for ref in r.images):
            raise ConfigError(f"{p}: records hold image bytes; write a .parquet file instead")
        with open(p, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    elif p.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(p, index=False)
    else:
        raise ConfigError(f"{p}: write_triplets supports .jsonl and .parquet")
    return p
