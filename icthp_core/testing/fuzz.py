"""Mutated image files for robustness tests: every file must give a score or an error row, within bounded memory.

`python bench/fuzz_decode.py --count 24000 --seed 0` runs the large campaign of docs/reliability.md;
tests/core/data/test_reliability_fuzz.py runs a bounded one in CI.
"""

from __future__ import annotations

import io
import resource
import struct
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image


def seed_images() -> dict[str, bytes]:
    """Small valid images in many formats and modes (the material the mutations start from)."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    out: dict[str, bytes] = {}

    def save(name: str, img: Image.Image, fmt: str, **kw) -> None:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        out[name] = buf.getvalue()

    save("rgb.png", rgb, "PNG")
    save("rgba.png", rgb.convert("RGBA"), "PNG")
    save("grey16.png", Image.fromarray(rng.integers(0, 65535, (40, 56), dtype=np.uint16)), "PNG")
    save("palette.png", rgb.convert("P"), "PNG", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif.jpg", rgb, "JPEG", exif=exif.tobytes(), quality=90)
    save("progressive.jpg", rgb, "JPEG", progressive=True)
    save("anim.gif", rgb.convert("P"), "GIF", save_all=True, append_images=[rgb.convert("P").rotate(90)])
    save("float.tif", Image.fromarray(rng.random((40, 56), dtype=np.float32)), "TIFF")
    save("lzw.tif", rgb, "TIFF", compression="tiff_lzw")
    save("rgb.webp", rgb, "WEBP")
    save("rgb.bmp", rgb, "BMP")
    save("cmyk.jpg", rgb.convert("CMYK"), "JPEG")
    return out


def _png_with_size(data: bytes, w: int, h: int) -> bytes:
    """`data` (a PNG) with its IHDR width/height replaced (CRC fixed, so decoders trust the header)."""
    if not data.startswith(b"\x89PNG") or len(data) < 33:
        return data
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", w, h)
    return data[:12] + bytes(ihdr) + struct.pack(">I", zlib.crc32(bytes(ihdr))) + data[33:]


#: the mutation kinds of `mutate`, by number; "shape" rewrites a PNG header to one of SHAPES (other formats: unchanged)
MUTATIONS = ("flip", "truncate", "insert", "delete", "zero", "shape", "duplicate")
#: the extreme (width, height) a "shape" mutation declares: a line each way, 10^10 and 36e6 pixels, a zero width
SHAPES = ((1, 1_000_000), (1_000_000, 1), (100_000, 100_000), (6_000, 6_000), (0, 5))


def mutate(data: bytes, rng: np.random.Generator, kind: int | None = None, shape: int | None = None) -> bytes:
    """One mutation (MUTATIONS[kind], random when None): flipped bytes, truncation, inserted/deleted/zeroed ranges,
    an absurd PNG size (SHAPES[shape], random when None) or a duplicated chunk; a file under 2 bytes becomes a few
    random bytes."""
    b = bytearray(data)
    kind = int(rng.integers(0, len(MUTATIONS))) if kind is None else kind
    n = len(b)
    if n < 2:  # an earlier mutation emptied the file: a few random bytes
        return rng.integers(0, 256, int(rng.integers(0, 16)), dtype=np.uint8).tobytes()
    if kind == 0:  # flip a few bytes (often in the header)
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, min(n, 64))) if rng.random() < 0.5 else int(rng.integers(0, n))
            b[i] = int(rng.integers(0, 256))
    elif kind == 1:  # truncate
        b = b[: int(rng.integers(0, n))]
    elif kind == 2:  # insert random bytes
        i = int(rng.integers(0, n))
        b[i:i] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == 3:  # delete a range
        i = int(rng.integers(0, n))
        del b[i : i + int(rng.integers(1, 64))]
    elif kind == 4:  # zero a range
        i = int(rng.integers(0, n))
        b[i : i + int(rng.integers(1, 128))] = bytes(min(n - i, 128))[: len(b[i : i + 128])]
    elif kind == 5:  # extreme shapes / pixel counts declared in the header
        w, h = SHAPES[int(rng.integers(0, len(SHAPES))) if shape is None else shape]
        return _png_with_size(bytes(b), w, h)
    else:  # duplicate a chunk of the file
        i = int(rng.integers(0, n))
        b += b[i : i + int(rng.integers(1, 256))]
    return bytes(b)


#: a header over the toolkit's default pixel limit (40e6) but under Pillow's own bomb limit (2 x 89.5e6): the
#: toolkit's check answers, not Pillow's
OVER_OUR_LIMIT = (10_000, 10_000)


def every_kind(seeds: dict[str, bytes], rng: np.random.Generator) -> dict[str, bytes]:
    """One file per (seed format, mutation kind), every SHAPE and OVER_OUR_LIMIT on every PNG seed, an empty file and
    a few random bytes: each decoder meets each kind of damage at least once, whatever the random draws."""
    out: dict[str, bytes] = {}
    for name, data in seeds.items():
        for kind, label in enumerate(MUTATIONS):
            if label != "shape":
                out[f"{label}_{name}"] = mutate(data, rng, kind)
            elif name.endswith(".png"):
                for w, h in (*SHAPES, OVER_OUR_LIMIT):
                    out[f"shape{w}x{h}_{name}"] = _png_with_size(data, w, h)
    out["empty_rgb.png"] = b""
    out["random_bytes_rgb.png"] = mutate(b"", rng)
    return out


def write_corpus(out_dir: str | Path, count: int, seed: int = 0, kinds: bool = False) -> list[Path]:
    """`count` files with 1-3 random mutations each and the unmutated seeds in `out_dir` (plus, with `kinds`, the
    `every_kind` files); file names keep the seed's suffix."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    seeds = seed_images()
    names = sorted(seeds)
    paths = []
    fixed = {f"seed_{name}": seeds[name] for name in names}
    if kinds:
        fixed.update(every_kind(seeds, np.random.default_rng([seed, 1])))
    for name, data in fixed.items():
        p = out_dir / name
        p.write_bytes(data)
        paths.append(p)
    for k in range(count):
        name = names[int(rng.integers(0, len(names)))]
        data = seeds[name]
        for _ in range(int(rng.integers(1, 4))):
            data = mutate(data, rng)
        p = out_dir / f"{k:05d}_{name}"
        p.write_bytes(data)
        paths.append(p)
    return paths


def peak_rss_mib() -> float:
    """This process's peak resident memory since start or the last `reset_peak_rss` (MiB)."""
    try:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:", 1)[1].split()[0]) / 1024  # Linux: kB
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> bool:
    """Reset the peak to the current resident size (Linux >= 4.0), so that a growth measured inside a long-lived
    process (a test run) is this work's own, not an earlier peak hiding it; False (nothing reset) elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def run(count: int, seed: int = 0, scorer=None, batch_size: int = 64, kinds: bool = False) -> dict:
    """Decode and preprocess (and score, with `scorer`) a fresh corpus (`write_corpus`); counts of rows, errors (all
    kinds in `all_error_kinds`), peak memory growth."""
    from icthp_core.data.batch import iter_file_batches

    reset_peak_rss()
    start, rss0 = time.perf_counter(), peak_rss_mib()
    with tempfile.TemporaryDirectory() as d:
        paths = write_corpus(d, count, seed, kinds)
        items = [(str(p), "a photo") for p in paths]
        rows = []
        if scorer is not None:
            rows = list(scorer.score_files(items, batch_size=batch_size, num_workers=0))
        else:
            for batch in iter_file_batches(items, ["crop", "letterbox"], batch_size, num_workers=0):
                rows += batch["rows"]
    errors = Counter(r["error"].split(": ", 1)[1].split(" (")[0] for r in rows if r["error"])
    return {
        "files": len(items),
        "rows": len(rows),
        "scored": sum(1 for r in rows if not r["error"]),
        "error_rows": sum(errors.values()),
        "error_kinds": dict(errors.most_common(8)),
        "all_error_kinds": sorted(errors),
        "errors_by_file": {Path(r["image"]).name: r["error"].split(": ", 1)[1] for r in rows if r["error"]},
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_growth_mib": round(peak_rss_mib() - rss0, 1),
    }


def _dataset_rows(source: str, batch: int = 64) -> tuple[int, Counter]:
    """Read every record of a dataset source and decode it through `decode_records`: (rows, error kinds)."""
    from icthp_core.data.sources import decode_records, iter_shard, plan_dataset

    rows, kinds, chunk = 0, Counter(), []

    def flush() -> None:
        nonlocal rows
        errors, _ = decode_records(chunk, ["crop"])
        rows += len(errors)
        kinds.update(e.split(": ", 1)[1].split(" (")[0] for e in errors if e)
        chunk.clear()

    for shard in plan_dataset(source):
        for rec in iter_shard(shard):
            chunk.append(rec)
            if len(chunk) >= batch:
                flush()
    flush()
    return rows, kinds


def _write_sources(d: Path, blobs: list[bytes]) -> dict[str, Path]:
    """The blobs as a parquet file of bytes, a WebDataset tar and a copy of that tar cut at 60%."""
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = {"parquet": d / "set.parquet", "webdataset": d / "set.tar", "truncated": d / "cut.tar"}
    pq.write_table(pa.table({"image": blobs, "prompt": ["a photo"] * len(blobs)}), out["parquet"], row_group_size=128)
    with tarfile.open(out["webdataset"], "w") as tf:
        for i, blob in enumerate(blobs):
            info = tarfile.TarInfo(f"./s{i:05d}.png")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    data = out["webdataset"].read_bytes()
    out["truncated"].write_bytes(data[: len(data) * 3 // 5])
    return out


def run_datasets(count: int, seed: int = 0, kinds: bool = False) -> dict:
    """The mutated corpus as encoded bytes (serve requests, uploads), parquet cells and WebDataset members (and a
    truncated tar): every item must give one row (pixels or an error), whatever the bytes; nothing aborts."""
    from icthp_core.data.images import decode_image
    from icthp_core.errors import ImageLoadError

    reset_peak_rss()
    start, rss0 = time.perf_counter(), peak_rss_mib()
    report: dict = {"items": 0}
    with tempfile.TemporaryDirectory() as d:
        blobs = [p.read_bytes() for p in write_corpus(Path(d) / "corpus", count, seed, kinds)]
        report["items"] = len(blobs)
        ok = 0
        for i, blob in enumerate(blobs):
            try:
                decode_image(blob, name=f"request[{i}]")
                ok += 1
            except ImageLoadError:
                pass
        report["bytes"] = {"rows": len(blobs), "decoded": ok}
        for label, src in _write_sources(Path(d), blobs).items():
            rows, kinds = _dataset_rows(str(src))
            report[label] = {"rows": rows, "errors": sum(kinds.values()), "error_kinds": dict(kinds.most_common(4))}
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["peak_rss_growth_mib"] = round(peak_rss_mib() - rss0, 1)
    return report


def run_metadata(count: int, seed: int = 0) -> dict:
    """Mutated PNGs carrying a score record: `read_record` gives a record, None or a DataError/OSError, never
    another exception; returns the counts (and the first unexpected exceptions, which must be none)."""
    import json

    from icthp_core.data.metadata import png_info, read_record
    from icthp_core.errors import DataError

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    record = {"scores": {"ict": 0.9, "hp": 0.7}, "prompt": "a cat", "nested": {"a": [1, 2, {"b": None}]}}
    Image.new("RGB", (32, 24), (9, 8, 7)).save(buf, format="PNG", pnginfo=png_info(record))
    seed_png = buf.getvalue()
    counts: Counter = Counter()
    unexpected: list[str] = []
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.png"
        for _ in range(count):
            data = seed_png
            for _ in range(int(rng.integers(1, 4))):
                data = mutate(data, rng)
            p.write_bytes(data)
            try:
                got = read_record(p)
                counts["record" if got else "none"] += 1
                if got:
                    json.dumps(got, allow_nan=False)  # a record never carries NaN/Infinity
            except (DataError, OSError):
                counts["error"] += 1
            except Exception as e:  # noqa: BLE001 - what the test must never see
                counts["unexpected"] += 1
                if len(unexpected) < 5:
                    unexpected.append(f"{type(e).__name__}: {e}")
    return {"files": count, **counts, "unexpected_examples": unexpected}
