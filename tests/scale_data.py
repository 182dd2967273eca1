"""Test images (`make_image`) and small data sets in every input layout `icthp score --dataset` reads.

Imported by plain module name, never as `tests.…`: a job forked by tests/jobproc.py after the ComfyUI tests put
ComfyUI's tree (which has its own `tests` package) first on `sys.path` would import the wrong `tests`."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def make_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth random RGB image (w, h) with structure at several scales."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 21, (h, w, 3))
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def png(seed: int, size=(72, 60), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    make_image(seed, size).save(buf, fmt)
    return buf.getvalue()


def write_pickapic(path: Path, n: int = 5, row_group_size: int = 2) -> Path:
    """Pick-a-Pic layout: `jpg_0`/`jpg_1` image bytes, `caption`, `ranking_id`; one corrupt cell (row 1, jpg_1)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    jpg_1 = [png(100 + i, (90, 64), "JPEG") for i in range(n)]
    jpg_1[1] = b"not an image"
    table = pa.table(
        {
            "jpg_0": [png(i) for i in range(n)],
            "jpg_1": jpg_1,
            "caption": [f"a photo of thing {i}" for i in range(n)],
            "ranking_id": list(range(n)),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_path_parquet(path: Path, image_dir: Path) -> Path:
    """Parquet with relative image paths in `image_path` and prompts in `prompt`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = sorted(p.name for p in image_dir.iterdir())[:3]
    for name in names:
        (path.parent / name).write_bytes((image_dir / name).read_bytes())
    pq.write_table(pa.table({"image_path": names, "prompt": [f"prompt {k}" for k in range(3)]}), path)
    return path


def write_wds(path: Path, n: int = 4) -> Path:
    """A WebDataset shard: key.jpg/.png + key.txt (or key.json with a caption)."""
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            members = {f"s{i:03d}.{'png' if i % 2 else 'jpg'}": png(200 + i, fmt="PNG" if i % 2 else "JPEG")}
            if i == 3:
                members[f"s{i:03d}.json"] = json.dumps({"caption": f"json caption {i}"}).encode()
            else:
                members[f"s{i:03d}.txt"] = f"text prompt {i}".encode()
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def write_hf(path: Path, n: int = 3) -> Path:
    """A datasets `save_to_disk` folder with an Image column `picture` and a `text` column."""
    import datasets
    from PIL import Image

    imgs = [Image.open(io.BytesIO(png(300 + i))) for i in range(n)]
    features = datasets.Features({"picture": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"picture": imgs, "text": [f"hf prompt {i}" for i in range(n)]}, features=features)
    ds.save_to_disk(str(path))
    return path
