"""JPEG compressibility: kB (bytes / 1000) of a Pillow JPEG at quality 95 (DDPO's definition, paper Table 2)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from icthp_core.evaluation.image_stats import jpeg_size_kb

# IJG (libjpeg) standard luminance quantisation table (ITU-T T.81 Annex K.1), natural order
LUMA = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]  # fmt: skip
ZIGZAG = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61,
    54, 47, 55, 62, 63,
]  # fmt: skip


def _image(seed: int = 0, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size)))
    return np.clip(smooth.astype(int) + rng.integers(-30, 31, smooth.shape), 0, 255).astype(np.uint8)


def _luma_table(data: bytes) -> list[int]:
    """The first 8-bit quantisation table of a JPEG byte string (DQT marker FFDB), in zigzag order."""
    i = data.index(b"\xff\xdb")
    assert data[i + 4] >> 4 == 0  # 8-bit precision
    return list(data[i + 5 : i + 5 + 64])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_jpeg_kb_matches_hand_computed_quality95_file():
    arr = _image()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    # the reference file really is quality 95: IJG scaling 200 - 2q = 10 -> q_ij = (base * 10 + 50) // 100, >= 1
    expected = [max(1, min(255, (LUMA[ZIGZAG[k]] * 10 + 50) // 100)) for k in range(64)]
    assert _luma_table(data) == expected
    # kB = bytes / 1000, and an independent encoder (torchvision's libjpeg binding) agrees on the byte count
    tv = torchvision_jpeg_bytes(arr, 95)
    assert len(data) == tv
    assert jpeg_size_kb(Image.fromarray(arr)) == pytest.approx(len(data) / 1000, abs=0)
    assert jpeg_size_kb(arr) == jpeg_size_kb(Image.fromarray(arr))
    # quality matters (so the value above is not quality-independent)
    assert jpeg_size_kb(arr, quality=75) < jpeg_size_kb(arr)


def torchvision_jpeg_bytes(arr: np.ndarray, quality: int) -> int:
    from torchvision.io import encode_jpeg

    return int(encode_jpeg(torch.from_numpy(arr).permute(2, 0, 1).contiguous(), quality=quality).numel())


def test_jpeg_kb_inputs(tmp_path):
    arr = _image(1)
    Image.fromarray(arr).save(tmp_path / "a.png")
    rgba = Image.fromarray(arr).convert("RGBA")
    assert jpeg_size_kb(tmp_path / "a.png") == jpeg_size_kb(arr) == jpeg_size_kb(rgba)
    flat = np.full((64, 64, 3), 128, np.uint8)
    assert jpeg_size_kb(flat) < jpeg_size_kb(arr)  # more detail, more kB
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        jpeg_size_kb(arr.astype(np.float32))
