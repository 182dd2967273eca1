"""Image decoding and preprocessing never cost memory, a run or a correct score (issue 10, classes 1, 2, 6)."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from reference import ref_pixels

from icthp_core.data.batch import FileItems
from icthp_core.data.images import ALPHA_BACKGROUND, MAX_PIXELS_ENV, check_image, decode_image, to_pil
from icthp_core.data.preprocess import preprocess_pil
from icthp_core.errors import ICTHPError, ImageLoadError


def _png_header_only(w: int, h: int) -> bytes:
    """A tiny PNG that declares w x h pixels (the data is one empty IDAT: a 'decompression bomb' header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ class 1


def test_pixel_limit_is_checked_before_decoding(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(100_000, 100_000))  # 10 G pixels declared in ~60 bytes
    with pytest.raises(ImageLoadError, match=r"bomb\.png: over the limit of 40,000,000 pixels"):
        decode_image(bomb)  # Pillow's own check (2 x 89 MP) fires first here, named the same way
    bomb.write_bytes(_png_header_only(10_000, 5_000))  # 50 MP: under Pillow's limit, over ours
    with pytest.raises(ImageLoadError, match=r"bomb\.png: 10000x5000 = 50,000,000 pixels is over the limit"):
        decode_image(bomb)
    small = tmp_path / "small.png"
    small.write_bytes(_png(Image.new("RGB", (300, 200))))
    monkeypatch.setenv(MAX_PIXELS_ENV, "50000")  # configurable: the environment variable
    with pytest.raises(ImageLoadError, match="over the limit of 50,000"):
        decode_image(small)
    assert decode_image(small, max_pixels=60_000).size == (300, 200)  # and the argument
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ImageLoadError, match=MAX_PIXELS_ENV):
        decode_image(small)


@pytest.mark.parametrize("size", [(2, 300), (300, 2), (7, 1000), (1000, 7), (30, 400), (400, 30)])
def test_extreme_shapes_match_clip_image_processor_closely(size):
    """The crop-first path (aspect > 4) stays within 2 grey levels of CLIPImageProcessor's full resize."""
    rng = np.random.default_rng(size[0])
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours, ref = preprocess_pil(img), ref_pixels([img])[0]
    grey_levels = (ours - ref).abs() * 0.2758 * 255  # the largest OpenAI std
    assert grey_levels.max() <= 2.1
    assert (grey_levels > 0.5).float().mean() < 0.02


def test_extreme_shape_uses_bounded_memory(tmp_path):
    """A 1 x 2,000,000 PNG (a few KB) used to allocate 224 x 224 x 2e6 floats; now the peak stays small. Measured in
    this process: its peak resident size is reset first (`reset_peak_rss`), so an earlier peak cannot hide growth."""
    from icthp_core.testing.fuzz import peak_rss_mib, reset_peak_rss

    f = tmp_path / "line.png"
    Image.new("L", (1, 2_000_000), 128).save(f)
    assert f.stat().st_size < 50_000
    if not reset_peak_rss():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident size")
    before = peak_rss_mib()
    x = preprocess_pil(decode_image(str(f)))
    grown_mib = peak_rss_mib() - before
    assert tuple(x.shape) == (3, 224, 224)
    assert grown_mib < 200, f"peak RSS grew by {grown_mib:.0f} MiB"


# ------------------------------------------------------------------------------------------------ class 2


def test_any_decoder_exception_is_that_files_error(tmp_path, monkeypatch):
    from PIL import PngImagePlugin

    good, bad = tmp_path / "good.jpg", tmp_path / "bad.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good)
    bad.write_bytes(_png(Image.new("RGB", (64, 64))))

    def boom(self):
        raise TypeError("unexpected tag type")  # what a malformed TIFF does inside Pillow

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", boom)
    with pytest.raises(ImageLoadError, match=r"bad\.png: cannot decode image \(TypeError: unexpected tag type\)"):
        decode_image(bad)
    items = FileItems([(str(bad), "p"), (str(good), "p")], ["crop"])
    assert items[0][2] is None and "bad.png" in items[0][3]
    assert items[1][3] is None and items[1][2]["crop"].shape == (3, 224, 224)


def test_errors_are_one_type_naming_the_file(tmp_path):
    cases = {"empty.png": b"", "text.png": b"hello", "trunc.png": _png(Image.new("RGB", (64, 64)))[:60]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageLoadError, match=name.replace(".", r"\.")) as e:
            decode_image(tmp_path / name)
        assert isinstance(e.value, ICTHPError) and isinstance(e.value, ValueError)
        with pytest.raises(ImageLoadError, match="upload 3"):
            decode_image(data, name="upload 3")  # bytes: named by the caller
    with pytest.raises(ImageLoadError, match="no such file"):
        decode_image(tmp_path / "missing.png")
    assert "text.png" in check_image(tmp_path / "text.png")


# ------------------------------------------------------------------------------------------------ class 6


def _colours(img: Image.Image) -> set[tuple[int, int, int]]:
    return {tuple(int(c) for c in px) for px in np.asarray(img).reshape(-1, 3)}


def _grey(img: Image.Image) -> set[tuple[int, int, int]]:
    return _colours(decode_image(_png(img) if img.mode != "F" else _tiff(img)))


def _tiff(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="TIFF")
    return buf.getvalue()


def test_high_bit_depth_and_float_are_scaled_not_clipped():
    img16 = Image.fromarray(np.full((8, 8), 128 * 257, dtype=np.uint16))
    assert img16.mode.startswith("I")
    assert _grey(img16) == {(128, 128, 128)}  # was (255, 255, 255): clipped to white
    f = Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32))
    assert f.mode == "F"
    assert _grey(f) == {(128, 128, 128)}  # was black
    img32 = Image.fromarray(np.full((8, 8), 65535, dtype=np.int32), "I")
    assert _colours(to_pil(img32)) == {(255, 255, 255)}


def test_alpha_is_composited_on_the_documented_background():
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 0))  # transparent black
    assert _grey(rgba) == {ALPHA_BACKGROUND}
    half = Image.new("RGBA", (8, 8), (0, 0, 0, 128))
    (v,) = _grey(half)
    assert v == (127, 127, 127)
    la = Image.new("LA", (8, 8), (0, 0))
    assert _grey(la) == {ALPHA_BACKGROUND}
    p = Image.new("P", (8, 8), 0)
    p.putpalette([0, 0, 0] * 256)
    assert _colours(decode_image(_png(p, transparency=0))) == {ALPHA_BACKGROUND}
    assert _colours(decode_image(_png(Image.new("1", (8, 8), 1)))) == {(255, 255, 255)}
    cmyk = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(cmyk, format="JPEG")
    assert decode_image(cmyk.getvalue()).mode == "RGB"


def make_image(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth random RGB image (w, h)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)


def _exif_jpeg(img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    img = make_image(3, (120, 60))
    rotated = decode_image(_exif_jpeg(img, 6))  # "rotate 90 CW to view"
    assert rotated.size == (60, 120)
    plain = decode_image(_exif_jpeg(img, 1))
    want = np.asarray(plain.transpose(Image.Transpose.ROTATE_270), dtype=int)
    assert np.abs(np.asarray(rotated, dtype=int) - want).mean() < 3  # same pixels up to JPEG noise


def test_paths_and_bytes_decode_identically(tmp_path):
    f = tmp_path / "x.png"
    make_image(1, (90, 70)).save(f)
    assert np.array_equal(np.asarray(decode_image(f)), np.asarray(decode_image(f.read_bytes())))
    assert torch.equal(preprocess_pil(to_pil(str(f))), preprocess_pil(to_pil(f.read_bytes())))


def test_nan_scores_become_error_rows(tiny_ict, tiny_hp, tmp_path, monkeypatch):
    from icthp_core import load_scorer

    scorer = load_scorer(tiny_ict, tiny_hp, device="cpu")
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(tmp_path / f"{i}.png")
    real = scorer.score_pixels

    def with_nan(pixels, prompts):
        out = {m: v.clone() for m, v in real(pixels, prompts).items()}
        out["hp"][1] = float("nan")
        out["ict_hp"][1] = float("inf")
        return out

    monkeypatch.setattr(scorer, "score_pixels", with_nan)
    rows = list(scorer.score_files([(str(tmp_path / f"{i}.png"), "p") for i in range(3)], num_workers=0))
    assert rows[1]["error"] and "non-finite score for hp, ict_hp" in rows[1]["error"] and "hp" not in rows[1]
    assert rows[0]["error"] is None and rows[2]["error"] is None
    from icthp_core.data.outputs import json_line

    assert "NaN" not in json_line({"x": None}) and json.loads(json_line(rows[1]))["error"]
