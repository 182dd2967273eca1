"""The app under bad uploads: rejected files listed (no server path), the rest scored; safe CSVs; cleanup."""

from __future__ import annotations

import csv
import struct
import zlib

import numpy as np
import pandas as pd
import torch
from icthp_app.controller import Controller
from icthp_app.csv_export import write_csv
from icthp_app.logic import public_message
from icthp_app.pool import ScorerPool
from icthp_app.uploads import UploadLimits, check_image
from PIL import Image


class _Scorer:
    def __init__(self, metrics, *_):
        self.metrics = metrics

    def score(self, images, prompts):
        from icthp_core.data.images import to_pil

        means = [float(torch.from_numpy(np.asarray(to_pil(i).resize((8, 8)))).float().mean()) for i in images]
        return {m: torch.tensor(means) for m in self.metrics}


def _pool():
    return ScorerPool(["ict", "hp", "ict_hp"], {"ict": "I", "hp": "H"}, factory=lambda m, s, d, t: _Scorer(m))


def _png_declaring(w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")
    )


def test_undecodable_upload_is_rejected_and_the_rest_scored(tmp_path):
    up = tmp_path / "gradio" / "f3a9c0" / "deep"
    up.mkdir(parents=True)
    for i, c in enumerate([(200, 0, 0), (0, 200, 0)]):
        Image.new("RGB", (64, 48), c).save(up / f"ok{i}.png")
    # headers that pass a header-only check but do not decode: truncated data, and a declared size over the limit
    (up / "truncated.png").write_bytes(_png_declaring(64, 48))
    (up / "huge.png").write_bytes(_png_declaring(20_000, 20_000))
    c = Controller(_pool(), out_dir=tmp_path / "out")
    files = [str(up / n) for n in ("ok0.png", "truncated.png", "huge.png", "ok1.png")]
    r = c.compare(files, "a prompt", ["ict_hp"])
    assert r.names == ["ok0.png", "ok1.png"]
    assert "truncated.png" in r.status_md and "huge.png" in r.status_md and "over the limit" in r.status_md
    assert str(tmp_path) not in r.status_md and "f3a9c0" not in r.status_md  # no server path
    why = check_image(up / "truncated.png", UploadLimits())
    assert why.startswith("truncated.png: ") and "/" not in why


def test_messages_never_show_server_paths():
    msg = "ImageLoadError: /tmp/gradio/1234abcd/cat photo.png: cannot decode image (OSError: broken data stream)"
    assert public_message(msg) == "ImageLoadError: cat photo.png: cannot decode image (OSError: broken data stream)"


def test_csv_cells_cannot_start_formulas(tmp_path):
    df = pd.DataFrame(
        {"image": ['=HYPERLINK("http://x")', "+1", "-cmd", "@SUM(A1)", "ok.png"], "ICT": [0.1, -0.5, 0, 1, 2]}
    )
    p = write_csv(df, tmp_path / "x.csv")
    with open(p, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["image"] for r in rows] == ['\'=HYPERLINK("http://x")', "'+1", "'-cmd", "'@SUM(A1)", "ok.png"]
    assert rows[1]["ICT"] == "-0.5"  # numbers stay numbers


def test_result_files_are_cleaned_up(tmp_path):
    c = Controller(_pool(), out_dir=tmp_path / "out")
    c.keep_results = 3
    for _ in range(6):
        c._csv(pd.DataFrame({"a": [1]}), "r.csv")
    assert len(list((tmp_path / "out").iterdir())) == 3
