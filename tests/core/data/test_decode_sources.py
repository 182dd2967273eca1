"""One decoder for every source (issue 19 point 4, issue 21): the same images scored from files, parquet bytes, a
WebDataset tar, a Hugging Face dataset, a serve request and an app upload give the same numbers, or the same error.

Parquet and WebDataset run at the user's path (`icthp score --dataset ...` in its own process, tests/jobproc.py);
the HF dataset through `icthp score` in-process; serve through its payload parser (`scale.protocol.parse_json`) and
the app through its upload check (`uploads.check_image`) and scorer, as the running server and app call them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import tarfile
import zlib
from pathlib import Path

import jobproc
import numpy as np
import pytest
from PIL import Image
from scale_data import make_image

from icthp_cli.main import main
from icthp_core import load_scorer
from icthp_core.data.sources import decode_records, plan_dataset, read_shard
from tests.paths import REPO

PROMPT = "a photo of a thing"


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _bomb_png(w: int, h: int) -> bytes:
    """A tiny PNG whose header declares w x h pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _cases() -> dict[str, tuple[bytes, Image.Image | None]]:
    """name -> (encoded bytes, the RGB image a person sees, built with plain PIL; None: an error row)."""
    base = make_image(11, (96, 72))
    grey = np.asarray(base.convert("L"), dtype=np.uint16) * 257  # 16-bit: exactly the 8-bit grey image scaled
    pal = base.quantize(8)
    pal_png = _save(pal, "PNG", transparency=int(np.asarray(pal)[0, 0]))
    pal_rgba = Image.open(io.BytesIO(pal_png)).convert("RGBA")
    seen = Image.alpha_composite(Image.new("RGBA", pal.size, (255, 255, 255, 255)), pal_rgba).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = _save(base, "JPEG", exif=exif.tobytes(), quality=95)
    cmyk = _save(base.convert("CMYK"), "JPEG", quality=95)
    return {
        "grey16.png": (_save(Image.fromarray(grey), "PNG"), base.convert("L").convert("RGB")),
        "palette_transparent.png": (pal_png, seen),
        "exif_rotated.jpg": (jpeg, Image.open(io.BytesIO(jpeg)).transpose(Image.Transpose.ROTATE_270).convert("RGB")),
        "cmyk.jpg": (cmyk, Image.open(io.BytesIO(cmyk)).convert("RGB")),
        "malformed.png": (_save(base, "PNG")[:200], None),
        "bomb.png": (_bomb_png(10_000, 5_000), None),
    }


NAMES = list(_cases())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Every case as a file, a parquet file of bytes, a WebDataset tar and an HF save_to_disk folder."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("sources")
    cases = _cases()
    (d / "files").mkdir()
    for name, (blob, _) in cases.items():
        (d / "files" / name).write_bytes(blob)
    blobs = [cases[n][0] for n in NAMES]
    pq.write_table(pa.table({"image": blobs, "prompt": [PROMPT] * len(NAMES)}), d / "set.parquet", row_group_size=2)
    with tarfile.open(d / "set.tar", "w") as tf:
        for i, name in enumerate(NAMES):
            ext = name.rsplit(".", 1)[1]
            for member, payload in ((f"./s{i}.{ext}", cases[name][0]), (f"./s{i}.txt", PROMPT.encode())):
                info = tarfile.TarInfo(member)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    features = datasets.Features({"image": datasets.Image(), "prompt": datasets.Value("string")})
    rows = {"image": [{"bytes": b, "path": None} for b in blobs], "prompt": [PROMPT] * len(NAMES)}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(d / "hf"))
    return {"dir": d, "cases": cases}


@pytest.fixture(scope="module")
def scorer(tiny_ict, tiny_hp):
    return load_scorer(tiny_ict, tiny_hp, device="cpu")


def _tail(error: str) -> str:
    """An error message without the item's name (each source names the item its own way)."""
    return error.split(": ", 1)[1]


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return jobproc.run(args, env=env, timeout=300)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_every_source_gives_the_same_scores_or_the_same_error(data, scorer, tiny_ict, tiny_hp, tmp_path):
    d, cases = data["dir"], data["cases"]
    files = [str(d / "files" / n) for n in NAMES]
    by_file = list(scorer.score_files([(f, PROMPT) for f in files], num_workers=0))
    results = {"file": by_file}
    models = ["--ict", str(tiny_ict), "--hp", str(tiny_hp), "--no-progress", "-q"]
    for label, src in (("parquet", d / "set.parquet"), ("webdataset", d / "set.tar")):
        out = tmp_path / f"{label}.jsonl"
        proc = _cli(["score", *models, "--dataset", str(src), "-o", str(out)])
        assert proc.returncode == 0, proc.stderr
        results[label] = _rows(out)
    out = tmp_path / "hf.jsonl"
    assert main(["score", *models, "--workers", "0", "--dataset", str(d / "hf"), "-o", str(out)]) == 0
    results["hf"] = _rows(out)
    assert [r["image"] for r in results["webdataset"]] == [f"{d / 'set.tar'}#./s{i}" for i in range(len(NAMES))]

    for label, rows in results.items():
        assert len(rows) == len(NAMES), label
        for name, row, ref in zip(NAMES, rows, by_file, strict=True):
            if cases[name][1] is None:
                assert row["error"] and _tail(row["error"]) == _tail(ref["error"]), (label, name, row["error"])
            else:
                assert row["error"] is None, (label, name, row["error"])
                assert row["ict_hp"] == pytest.approx(ref["ict_hp"], abs=1e-6), (label, name)
    assert "cannot decode image" in by_file[NAMES.index("malformed.png")]["error"]
    assert "over the limit of 40,000,000" in by_file[NAMES.index("bomb.png")]["error"]

    # the numbers are those of what a person sees: 16-bit scaled (not white), alpha on white, rotated, CMYK converted
    good = [n for n in NAMES if cases[n][1] is not None]
    ref = scorer.score([cases[n][1] for n in good], PROMPT)["ict_hp"]
    got = [by_file[NAMES.index(n)]["ict_hp"] for n in good]
    assert np.allclose(got, ref.numpy(), atol=1e-6)


def test_serve_requests_and_app_uploads_decode_the_same(data, scorer):
    from icthp_app.uploads import UploadLimits, check_image

    from icthp_core.scale.protocol import BadRequest, parse_json

    d, cases = data["dir"], data["cases"]
    rows = scorer.score_files([(str(d / "files" / n), PROMPT) for n in NAMES], num_workers=0)
    by_file = dict(zip(NAMES, rows, strict=True))
    for name in NAMES:
        body = json.dumps({"images": [base64.b64encode(cases[name][0]).decode()], "prompt": PROMPT}).encode()
        upload = check_image(d / "files" / name, UploadLimits())
        if cases[name][1] is None:
            with pytest.raises(BadRequest) as e:
                parse_json(body, ["ict", "hp", "ict_hp"], {"ict", "ict_hp"}, max_images=4)
            assert _tail(str(e.value)) == _tail(by_file[name]["error"])
            assert upload is not None and _tail(upload) == _tail(by_file[name]["error"])
            continue
        req = parse_json(body, ["ict", "hp", "ict_hp"], {"ict", "ict_hp"}, max_images=4)
        assert upload is None
        served = float(scorer.score(req.images, req.prompts)["ict_hp"][0])
        uploaded = float(scorer.score([str(d / "files" / name)], PROMPT)["ict_hp"][0])  # what the app's pool runs
        assert served == pytest.approx(by_file[name]["ict_hp"], abs=1e-6)
        assert uploaded == pytest.approx(by_file[name]["ict_hp"], abs=1e-6)


def test_a_decoder_exception_of_any_type_is_an_error_row_in_every_dataset(data, monkeypatch):
    """A malformed TIFF raises TypeError inside Pillow: an error row for that record, never an aborted run."""
    from PIL import JpegImagePlugin

    def boom(self):
        raise TypeError("unexpected tag type")

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", boom)
    d = data["dir"]
    jpegs = {i for i, n in enumerate(NAMES) if n.endswith(".jpg")}
    for src in (d / "set.parquet", d / "set.tar", d / "hf"):
        records = [r for shard in plan_dataset(str(src)) for r in read_shard(shard)]
        errors, _ = decode_records(records, ["crop"])
        bad = {i for i, e in enumerate(errors) if e and "TypeError: unexpected tag type" in e}
        assert bad == jpegs, (src, errors)
