"""Best-of-N selection (icthp_core.scoring.selection): ranking, k clamp, ties, re-indexing."""

import math

import pytest
import torch

from icthp_core.scoring.selection import rank, select_batch, select_latent, select_mask

pytestmark = [pytest.mark.comfyui]


def test_rank_orders_best_first_and_clamps_k():
    s = rank(torch.tensor([0.1, 0.9, 0.5, 0.7]), 2)
    assert s.selected == [1, 3] and s.rejected == [2, 0]
    assert s.selected_scores == pytest.approx([0.9, 0.7])
    s = rank([0.3, 0.2], 10)
    assert s.selected == [0, 1] and s.rejected == []


def test_rank_ties_are_stable_and_nan_last():
    assert rank([0.5, 0.7, 0.5, 0.7, 0.5], 3).selected == [1, 3, 0]
    s = rank([float("nan"), 0.2, 0.4], 3)
    assert s.selected == [2, 1, 0] and math.isnan(s.scores[0])


def test_rank_single_and_bad_inputs():
    assert rank([0.42], 1).selected == [0]
    with pytest.raises(ValueError, match="empty"):
        rank([], 1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        rank([1.0], 0)
    with pytest.raises(ValueError, match="1-D"):
        rank(torch.zeros(2, 2), 1)


def test_select_latent_moves_samples_masks_and_batch_index_together():
    samples = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 4, 2, 2).clone()
    mask = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).clone()
    latent = {"samples": samples, "noise_mask": mask, "batch_index": [10, 11, 12, 13], "type": "x"}
    out = select_latent(latent, [2, 0])
    assert out["samples"][:, 0, 0, 0].tolist() == [2.0, 0.0]
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [2.0, 0.0]
    assert out["batch_index"] == [12, 10] and out["type"] == "x"
    assert latent["samples"].shape[0] == 4  # input untouched
    # no batch_index: ComfyUI's default positions are kept; a shared mask stays shared
    out = select_latent({"samples": samples, "noise_mask": mask[:1]}, [3])
    assert out["batch_index"] == [3] and out["noise_mask"].shape[0] == 1
    with pytest.raises(ValueError, match="batch_index"):
        select_latent({"samples": samples, "batch_index": [0]}, [0])
    with pytest.raises(ValueError, match="noise_mask"):
        select_latent({"samples": samples, "noise_mask": mask[:2]}, [0])


def test_select_mask_and_batch():
    m = torch.arange(3.0).view(3, 1, 1).expand(3, 4, 4)
    assert select_mask(m, [1], 3)[:, 0, 0].tolist() == [1.0]
    assert select_mask(m[0], [1], 3).shape == (4, 4)
    img = torch.rand(3, 8, 8, 3)
    assert torch.equal(select_batch(img, [2, 1]), img[[2, 1]])
    assert select_batch(img, []).shape == (0, 8, 8, 3)
    with pytest.raises(IndexError):
        select_batch(img, [3])
