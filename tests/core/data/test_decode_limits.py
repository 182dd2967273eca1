"""The one set of decode limits (pixels from the header, encoded bytes) and the header-only probe serve uses."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image, PngImagePlugin

from icthp_core.data.images import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    MAX_BYTES_ENV,
    ImageLimits,
    decode_image,
    probe_image,
)
from icthp_core.errors import ImageLoadError


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _png(size=(30, 20), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def test_probe_reads_the_header_only(tmp_path, monkeypatch):
    def no_decoding(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    assert probe_image(_png((30, 20)), name="req[0]") == (30, 20)
    (tmp_path / "a.png").write_bytes(_png((7, 9)))
    assert probe_image(tmp_path / "a.png") == (7, 9)
    with pytest.raises(ImageLoadError, match=r"req\[1\]: 10000x5000 = 50,000,000 pixels is over the limit"):
        probe_image(_png_header_only(10_000, 5_000), name="req[1]")
    with pytest.raises(ImageLoadError, match=r"req\[2\]: over the limit of 40,000,000 pixels"):
        probe_image(_png_header_only(100_000, 100_000), name="req[2]")  # Pillow's own bomb check, same wording
    assert probe_image(_png((30, 20)), limits=ImageLimits(max_pixels=600)) == (30, 20)
    with pytest.raises(ImageLoadError, match="over the limit of 599"):
        probe_image(_png((30, 20)), limits=ImageLimits(max_pixels=599))
    with pytest.raises(ImageLoadError, match="req: not an image"):
        probe_image(b"hello", name="req")


def test_encoded_size_limit_is_checked_before_reading(tmp_path, monkeypatch):
    assert ImageLimits.resolve() == ImageLimits(DEFAULT_MAX_PIXELS, DEFAULT_MAX_BYTES)
    data = _png()
    (tmp_path / "a.png").write_bytes(data)
    monkeypatch.setenv(MAX_BYTES_ENV, str(len(data) - 1))
    for source in (data, tmp_path / "a.png"):
        with pytest.raises(ImageLoadError, match=f"{len(data):,} bytes is over the limit of {len(data) - 1:,} bytes"):
            decode_image(source)
        with pytest.raises(ImageLoadError, match="bytes is over the limit"):
            probe_image(source)
    monkeypatch.setenv(MAX_BYTES_ENV, "many")
    with pytest.raises(ImageLoadError, match=MAX_BYTES_ENV):
        decode_image(data)
    assert decode_image(data, limits=ImageLimits(max_bytes=len(data))).size == (30, 20)


def test_upstream_policy_keeps_the_mode_and_orientation():
    rgba = decode_image(_png(mode="RGBA"), policy="upstream")
    assert rgba.mode == "RGBA" and decode_image(_png(mode="RGBA")).mode == "RGB"
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (40, 20)).save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue(), policy="upstream").size == (40, 20)
    assert decode_image(buf.getvalue()).size == (20, 40)
