"""JPEG compressibility and the collapse signals, against hand-computed values."""

from __future__ import annotations

import numpy as np
from PIL import Image

from icthp_core.evaluation.image_stats import color_histogram, histogram_distance, jpeg_size_kb, saturation


def test_jpeg_size_is_file_size_in_kb_at_quality_95(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(64, 48, 3), dtype=np.uint8)
    path = tmp_path / "x.jpg"
    Image.fromarray(arr).save(path, format="JPEG", quality=95)
    assert jpeg_size_kb(arr) == path.stat().st_size / 1000
    Image.fromarray(arr).save(path, format="JPEG", quality=50)
    assert jpeg_size_kb(arr, quality=50) == path.stat().st_size / 1000
    flat = np.full((64, 48, 3), 128, dtype=np.uint8)
    assert jpeg_size_kb(flat) < jpeg_size_kb(arr) / 5  # noise carries more information than a flat image


def test_saturation_hand_values():
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    assert saturation(red) == 1.0
    assert saturation(np.full((4, 4, 3), 90, np.uint8)) == 0.0
    assert saturation(np.zeros((4, 4, 3), np.uint8)) == 0.0  # black counts 0, not NaN
    half = np.zeros((2, 1, 3), np.uint8)
    half[0] = (200, 100, 100)  # (200-100)/200 = 0.5
    half[1] = (255, 255, 255)  # 0
    assert abs(saturation(half) - 0.25) < 1e-12


def test_color_histogram_and_distance():
    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    blue = np.zeros((4, 4, 3), np.uint8)
    blue[..., 2] = 255
    h_red, h_blue = color_histogram([red], bins=4), color_histogram([blue], bins=4)
    assert h_red.sum() == 1.0 and h_red[3 * 16] == 1.0  # cell (r=3, g=0, b=0)
    assert histogram_distance(h_red, h_blue) == 1.0
    assert histogram_distance(h_red, h_red) == 0.0
    both = color_histogram([red, blue], bins=4)
    assert abs(histogram_distance(h_red, both) - 0.5) < 1e-12
