"""Reading stored scores (`--from-metadata`, the app's stored column): text chunks without decoding pixels, and a bad
record is that file's error, never an abort (issue 21)."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from icthp_cli.main import main
from icthp_core.data.metadata import KEY, MAX_RECORD_DEPTH, png_info, read_record
from icthp_core.errors import DataError, ICTHPError
from icthp_core.scoring.records import build_record

GOOD = {"format": 1, "prompt": "a cat", "model": "ICT-HP", "scores": {"ict": 0.9, "hp": 0.7}}


def _png_with_text(path, text: str, size=(64, 48), **kw):
    info = PngImagePlugin.PngInfo()
    info.add_text(KEY, text, **kw)
    Image.new("RGB", size, (10, 20, 30)).save(path, pnginfo=info)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_records_are_read_without_decoding_pixels(tmp_path, monkeypatch):
    plain = _png_with_text(tmp_path / "t.png", json.dumps(GOOD))
    z = _png_with_text(tmp_path / "z.png", json.dumps(GOOD), zip=True)
    i = _png_with_text(tmp_path / "i.png", json.dumps(GOOD | {"prompt": "ein Kätzchen ☕"}))  # non-Latin-1: iTXt
    # a text chunk after the image data (allowed by the PNG specification; Pillow's `info` misses it until load)
    buf = io.BytesIO()
    Image.new("RGB", (64, 48)).save(buf, format="PNG")
    data = buf.getvalue()
    after = tmp_path / "after.png"
    after.write_bytes(data[:-12] + _chunk(b"tEXt", KEY.encode() + b"\0" + json.dumps(GOOD).encode()) + data[-12:])

    def no_decoding(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    assert read_record(plain) == GOOD and read_record(z) == GOOD and read_record(after) == GOOD
    assert read_record(i)["prompt"] == "ein Kätzchen ☕"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (json.dumps({"scores": {"ict": "high"}}), "score 'ict' is not a finite number"),
        ('{"scores": {"ict": NaN}}', "not valid JSON (NaN is not a number)"),
        ('{"scores": {"ict": Infinity}}', "not valid JSON (Infinity is not a number)"),
        (json.dumps({"scores": {"ict": True}}), "score 'ict' is not a finite number"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"scores": {"ict": 1}, "x": ' + "[" * 40 + "]" * 40 + "}", f"deeper than {MAX_RECORD_DEPTH}"),
        ("{not json", "not valid JSON"),
        (json.dumps({"score": 1}), "no 'scores' object"),
    ],
)
def test_a_bad_record_is_one_error_naming_the_file(tmp_path, text, message):
    p = _png_with_text(tmp_path / "bad.png", text)
    with pytest.raises(DataError, match=re.escape(message)) as e:
        read_record(p)
    assert str(p) in str(e.value) and isinstance(e.value, ICTHPError) and isinstance(e.value, ValueError)


def test_other_files(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.jpg")
    assert read_record(tmp_path / "plain.jpg") is None
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    assert read_record(tmp_path / "plain.png") is None
    (tmp_path / "text.png").write_bytes(b"hello")
    with pytest.raises(DataError, match="text.png: not an image"):
        read_record(tmp_path / "text.png")


def test_a_record_of_thousands_of_metrics_reads_fast(tmp_path):
    """Fast = read from the PNG's text chunk without decoding a pixel: the image data is destroyed here (a decoder
    would fail), and the 3000 scores still come back, every one. (Speed itself is measured by benchmarks, not here.)"""
    record = build_record({}, "p", "m") | {"scores": {f"metric_{i}": i / 3000 for i in range(3000)}}
    p = tmp_path / "many.png"
    Image.new("RGB", (512, 512), (10, 200, 30)).save(p, pnginfo=png_info(record))
    data = bytearray(p.read_bytes())
    idat = data.index(b"IDAT") + 4
    data[idat : idat + 64] = b"\xff" * 64  # the compressed pixels, garbled (length and chunk layout kept)
    p.write_bytes(bytes(data))
    with pytest.raises(Exception):  # noqa: B017, PT011  (any decoder error: the pixels cannot be decoded)
        Image.open(p).load()
    assert read_record(p)["scores"] == record["scores"]


def test_from_metadata_keeps_going_past_bad_records(tmp_path, capsys):
    good = _png_with_text(tmp_path / "a_good.png", json.dumps(GOOD))
    _png_with_text(tmp_path / "b_nan.png", '{"scores": {"ict": NaN}}')
    _png_with_text(tmp_path / "c_nested.png", "[" * 100_000 + "]" * 100_000)
    out = tmp_path / "rows.jsonl"
    assert main(["score", "--from-metadata", str(tmp_path), "--output", str(out), "-q"]) == 0
    text = out.read_text()

    def strict(token: str):
        raise AssertionError(f"bare {token} written")

    rows = [json.loads(x, parse_constant=strict) for x in text.splitlines()]
    (row,) = [r for r in rows if r.get("image") == str(good)]
    assert {m: row[m] for m in GOOD["scores"]} == GOOD["scores"] and row["error"] is None
    assert all(r["error"] for r in rows if r.get("image") != str(good))
    said = capsys.readouterr().err + text
    assert "b_nan.png" in said and "c_nested.png" in said
