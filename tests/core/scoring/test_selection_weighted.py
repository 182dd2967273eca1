"""Weighted multi-reward combination and threshold selection (icthp_core.scoring.selection), by hand-computed values."""

import pytest
import torch

from icthp_core.scoring.selection import combine_scores, parse_reference, parse_weights, select


def test_parse():
    assert parse_weights("ict_hp:1.0, imagereward:0.5") == {"ict_hp": 1.0, "imagereward": 0.5}
    assert parse_weights("hp") == {"hp": 1.0}
    assert parse_reference("ict_hp:0.7:0.05") == {"ict_hp": (0.7, 0.05)}
    with pytest.raises(ValueError, match="'ict_hp:x' is not 'metric:number'"):
        parse_weights("ict_hp:x")
    with pytest.raises(ValueError, match="std > 0"):
        parse_reference("hp:0.5:0")
    with pytest.raises(ValueError, match="empty"):
        parse_weights(" ")


def test_combine_batch_reference_none():
    scores = {"a": torch.tensor([1.0, 2.0, 3.0]), "b": torch.tensor([10.0, 10.0, 40.0])}
    za = torch.tensor([-1.0, 0.0, 1.0]) * (3 / 2) ** 0.5  # population z-scores of 1, 2, 3
    zb = (torch.tensor([10.0, 10.0, 40.0]) - 20) / (200**0.5)
    got = combine_scores(scores, {"a": 1.0, "b": 0.5}, "batch")
    torch.testing.assert_close(got, za + 0.5 * zb)
    got = combine_scores(scores, {"a": 2.0, "b": 1.0}, "reference", {"a": (2.0, 0.5), "b": (0.0, 10.0)})
    torch.testing.assert_close(got, torch.tensor([-3.0, 1.0, 8.0]))  # 2 * (a - 2) / 0.5 + b / 10
    torch.testing.assert_close(combine_scores(scores, {"a": 1.0}, "none"), scores["a"])
    # a batch of one (or a constant metric) contributes 0 in batch mode, not NaN
    assert combine_scores({"a": torch.tensor([5.0])}, {"a": 1.0}).tolist() == [0.0]
    with pytest.raises(ValueError, match="not scored"):
        combine_scores(scores, {"c": 1.0})
    with pytest.raises(ValueError, match="reference statistics"):
        combine_scores(scores, {"a": 1.0}, "reference", {})


def test_threshold_and_nothing_passed():
    s = [0.2, 0.9, 0.5, float("nan"), 0.7]
    sel = select(s, k=2, threshold=0.5)
    assert sel.selected == [1, 4] and sel.rejected == [2, 0, 3]
    assert select(s, k=9, threshold=0.5).selected == [1, 4, 2]
    assert select(s, k=2).selected == [1, 4]
    assert select(s, k=2, threshold=0.95).selected == [1]  # keep_best
    empty = select(s, k=2, threshold=0.95, on_empty="empty")
    assert empty.selected == [] and len(empty.rejected) == 5
    with pytest.raises(ValueError, match="no score reached the threshold 0.95 \\(best 0.9000\\)"):
        select(s, k=2, threshold=0.95, on_empty="error")


def test_batch_nan_is_ranked_last_and_does_not_zero_the_metric():
    """A failed image (NaN) is left out of the batch statistics; the others keep their order; best-of-1 is the best."""
    nan = float("nan")
    a = torch.tensor([1.0, nan, 3.0, 2.0])
    got = combine_scores({"a": a}, {"a": 1.0}, "batch")
    z = (torch.tensor([1.0, 3.0, 2.0]) - 2.0) / (2 / 3) ** 0.5
    torch.testing.assert_close(got[[0, 2, 3]], z)
    assert torch.isnan(got[1])
    assert select(got, k=1).selected == [2]  # not image 0 (the worst), as when the NaN zeroed every z-score
    assert select(got, k=4).selected == [2, 3, 0, 1]
    # an infinite score is a failed score too; another metric's NaN makes only that image's total NaN
    got = combine_scores(
        {"a": torch.tensor([1.0, 5.0, 3.0]), "b": torch.tensor([0.0, 1.0, float("inf")])}, {"a": 1.0, "b": 1.0}
    )
    assert torch.isnan(got[2]) and got[1] > got[0]
    assert select(got, k=1).selected == [1]


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "NaN"])
def test_non_finite_weights_and_reference_refused(bad):
    with pytest.raises(ValueError, match="finite"):
        parse_weights(f"ict_hp:{bad}")
    with pytest.raises(ValueError, match="finite"):
        combine_scores({"a": torch.tensor([1.0, 2.0])}, {"a": float(bad)})
    with pytest.raises(ValueError, match="finite"):
        parse_reference(f"ict_hp:{bad}:1")
