"""Mutated image files for robustness tests: every file must give a score or an error row, within bounded memory.

`python bench/fuzz_decode.py --count 24000 --seed 0` runs the large campaign of docs/reliability.md;
tests/test_reliability_fuzz.py runs a bounded one in CI.
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


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random mutation: flipped bytes, truncation, inserted/deleted/zeroed ranges, or an absurd PNG size."""
    b = bytearray(data)
    kind = int(rng.integers(0, 7))
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
        w, h = [(1, 1_000_000), (1_000_000, 1), (100_000, 100_000), (6_000, 6_000), (0, 5)][int(rng.integers(0, 5))]
        return _png_with_size(bytes(b), w, h)
    else:  # duplicate a chunk of the file
        i = int(rng.integers(0, n))
        b += b[i : i + int(rng.integers(1, 256))]
    return bytes(b)


def write_corpus(out_dir: str | Path, count: int, seed: int = 0) -> list[Path]:
    """`count` mutated files (and the unmutated seeds) in `out_dir`; file names keep the seed's suffix."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    seeds = seed_images()
    names = sorted(seeds)
    paths = []
    for name in names:
        p = out_dir / f"seed_{name}"
        p.write_bytes(seeds[name])
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
    """This process's peak resident memory so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(count: int, seed: int = 0, scorer=None, batch_size: int = 64) -> dict:
    """Decode and preprocess (and score, with `scorer`) a fresh corpus; counts of rows, errors, peak memory."""
    from icthp_core.data.batch import iter_file_batches

    start, rss0 = time.perf_counter(), peak_rss_mib()
    with tempfile.TemporaryDirectory() as d:
        paths = write_corpus(d, count, seed)
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
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_growth_mib": round(peak_rss_mib() - rss0, 1),
    }
