"""The GPU decode path's torch ops, run on the CPU: tolerance against the PIL-exact path, errors, options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from icthp_core.data.batch import iter_file_batches
from icthp_core.data.preprocess import OPENAI_STD, preprocess_pil
from icthp_core.scoring.gpu_preprocess import (
    DECODE_TOLERANCE,
    decode_jpegs,
    default_workers,
    iter_gpu_batches,
    preprocess_uint8,
    read_encoded,
    resolve_decode,
)

SIZES = [(300, 200), (200, 320), (257, 257), (640, 480)]


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(SIZES * 2):
        small = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
        p = root / (f"{i}.jpg" if i % 4 else f"{i}.png")
        img.save(p, quality=90) if p.suffix == ".jpg" else img.save(p)
        paths.append(str(p))
    broken = root / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 32)
    return paths, str(broken)


def _pixel_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) * torch.tensor(OPENAI_STD).view(-1, 1, 1)).abs()  # [0, 1] pixel units


@pytest.mark.parametrize("mode", ["crop", "letterbox"])
def test_torch_decode_path_within_stated_tolerance_of_pil(image_files, mode):
    paths, _ = image_files
    for p in paths:
        kind, t = read_encoded(p)
        assert kind == ("jpeg" if p.endswith(".jpg") else "pixels")
        img = decode_jpegs([t], "cpu")[0] if kind == "jpeg" else t
        got = preprocess_uint8([img], mode)[0]
        ref = preprocess_pil(Image.open(p), mode)
        d = _pixel_diff(got, ref)
        assert got.shape == ref.shape == (3, 224, 224)
        assert float(d.mean()) <= DECODE_TOLERANCE["pixel_mean_abs"], p
        assert float(d.max()) <= DECODE_TOLERANCE["pixel_max_abs"], p
        assert float(d.mean()) > 0 or kind == "pixels"  # a different resampler: the test can tell them apart


def test_preprocess_uint8_groups_mixed_sizes_in_order():
    imgs = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for w, h in SIZES + SIZES[:1]]
    batch = preprocess_uint8(imgs, "crop")
    for i, img in enumerate(imgs):
        assert torch.allclose(batch[i], preprocess_uint8([img], "crop")[0], atol=1e-6)


def test_gpu_batches_match_pil_batches_and_report_bad_files(image_files):
    paths, broken = image_files
    items = [(p, "a prompt") for p in paths[:3]] + [(broken, "a prompt")] + [(p, "a prompt") for p in paths[3:]]
    gpu = list(iter_gpu_batches(items, ["crop", "letterbox"], "cpu", batch_size=3, num_workers=0))
    pil = list(iter_file_batches(items, ["crop", "letterbox"], batch_size=3, num_workers=0))
    rows_g = [r for b in gpu for r in b["rows"]]
    rows_p = [r for b in pil for r in b["rows"]]
    assert [r["image"] for r in rows_g] == [p for p, _ in items]
    assert [r["error"] is None for r in rows_g] == [r["error"] is None for r in rows_p]
    assert "broken.jpg" in rows_g[3]["error"]
    for bg, bp in zip(gpu, pil, strict=True):
        for m in ("crop", "letterbox"):
            if m in bp["pixels"]:
                assert float(_pixel_diff(bg["pixels"][m], bp["pixels"][m]).mean()) <= DECODE_TOLERANCE["pixel_mean_abs"]


@pytest.fixture(scope="module")
def scorer(tiny_ict, tiny_hp):
    from icthp_core import load_scorer

    return load_scorer(tiny_ict, tiny_hp, device="cpu")


def test_scores_of_both_paths_agree(image_files, scorer):
    paths, _ = image_files
    items = [(p, "a red circle") for p in paths]
    ref = list(scorer.score_files(items, batch_size=4, num_workers=0, decode="cpu"))
    batches = iter_gpu_batches(items, scorer.preprocess_modes, "cpu", batch_size=4, num_workers=0)
    got = [scorer.score_pixels(b["pixels"], ["a red circle"] * len(b["rows"])) for b in batches]
    got_ict_hp = torch.cat([g["ict_hp"] for g in got])
    assert torch.allclose(got_ict_hp, torch.tensor([r["ict_hp"] for r in ref]), atol=1e-3)


def test_decode_option_and_workers():
    assert resolve_decode("auto", "cpu") == "cpu"
    assert resolve_decode("auto", torch.device("cuda")) == "gpu"
    assert resolve_decode("cpu", "cuda") == "cpu"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_decode("gpu", "cpu")
    with pytest.raises(ValueError, match="decode="):
        resolve_decode("fast", "cpu")
    assert default_workers("cpu", "cpu") >= 0
    assert default_workers("cuda", "gpu") >= 1


def test_score_files_rejects_gpu_decode_on_cpu(scorer, image_files):
    with pytest.raises(ValueError, match="needs a CUDA device"):
        list(scorer.score_files([(image_files[0][0], "x")], decode="gpu"))
