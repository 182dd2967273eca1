"""Labels, losses and metrics against hand-computed values."""

import math

import pytest
import torch
import torch.nn.functional as F

from icthp_core.evaluation.metrics import (
    choose_tie_threshold,
    pairwise_accuracy,
    tie_aware_accuracy,
    tie_aware_credit,
    triplet_accuracy,
)
from icthp_core.training.labels import alignment_score, auto_theta, build_ict_labels, ict_labels
from icthp_core.training.losses import hp_margin_loss, ict_loss, ict_loss_from_scores, negative_weight, pair_margin_loss


def test_alignment_score_clamps():
    c = alignment_score(torch.tensor([0.1, 0.25, 0.4, -0.1]), theta=0.25)
    assert torch.allclose(c, torch.tensor([0.4, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="theta"):
        alignment_score(torch.tensor([0.1]), theta=0.0)


def test_ict_labels_hand_values():
    # triplet 0: C(I1)=0.2/0.25=0.8, C(I2)=min(1.2,1)=1 -> E1=0.8, E2=1, text sim 0.9 -> R1=0.72, R2=0.9
    # triplet 1: C(I1)=0.6, C(I2)=0.4 -> E1=min(0.6,0.4)=0.4, E2=0.4, text sim 0.5 -> R1=R2=0.2
    t = torch.tensor
    lab = ict_labels(t([0.2, 0.15]), t([0.3, 0.1]), t([0.9, 0.5]), theta=0.25)
    assert torch.allclose(lab.E1, torch.tensor([0.8, 0.4]))
    assert torch.allclose(lab.E2, torch.tensor([1.0, 0.4]))
    assert torch.allclose(lab.R1, torch.tensor([0.72, 0.2]))
    assert torch.allclose(lab.R2, torch.tensor([0.9, 0.2]))
    assert torch.equal(lab.easy()[:, 2], torch.ones(2)) and torch.equal(lab.refined()[:, 2], torch.ones(2))
    # the upstream bug filled E2 from R1; here E2 != R1 whenever the text similarity is < 1
    assert not torch.allclose(lab.E2, lab.R1)


def test_auto_theta_percentile():
    v = torch.tensor([0.5, 0.1, 0.4, 0.2, 0.3])
    assert auto_theta(v, 25) == pytest.approx(0.2)
    assert auto_theta(v, 10) == pytest.approx(0.14)
    with pytest.raises(ValueError):
        auto_theta(torch.tensor([-0.2, -0.1]), 10)
    sims = {
        "i1_easy": torch.tensor([0.1]),
        "i2_easy": torch.tensor([0.2]),
        "i3_easy": v,
        "easy_ref": torch.tensor([1.0]),
    }
    lab, theta = build_ict_labels(sims, theta=None, percentile=25)
    assert theta == pytest.approx(0.2)
    assert lab.E1.item() == pytest.approx(0.5) and lab.E2.item() == pytest.approx(1.0)


def test_negative_weight():
    assert negative_weight(torch.tensor(6.0)).item() == pytest.approx(0.5)
    assert negative_weight(torch.tensor(-6.1)).item() == pytest.approx(1 / (1 + math.exp(2.0)), rel=1e-5)
    assert negative_weight(torch.tensor(0.3)).item() == pytest.approx(1.0)
    assert negative_weight(torch.tensor(7.0)).item() < 1e-8


def _scores():
    easy = torch.zeros(2, 3, 2)
    easy[0, :, 0] = torch.tensor([0.5, 0.6, 0.9])
    easy[1, :, 1] = torch.tensor([0.2, 0.4, 1.0])
    easy[0, :, 1] = torch.tensor([0.1, 0.2, 0.3])
    easy[1, :, 0] = torch.tensor([0.0, -0.1, 0.2])
    labels = torch.tensor([[0.4, 0.6, 1.0], [0.2, 0.5, 1.0]])
    return easy, labels


def test_ict_loss_hand_value():
    easy, labels = _scores()
    out = ict_loss_from_scores(easy, easy.clone(), labels, labels.clone(), lam=0.1)
    # positives: squared errors 0.01, 0, 0.01, 0, 0.01, 0 -> mean 0.005 (x2 prompts)
    # negatives: 0.01, 0.04, 0.09, 0, 0.01, 0.04 -> mean 0.19/6 (x2 prompts), w ~ 1
    assert out.mse.item() == pytest.approx(0.01, abs=1e-7)
    assert out.negative.item() == pytest.approx(2 * 0.19 / 6, abs=1e-7)
    assert out.loss.item() == pytest.approx(0.01 + 0.1 * 2 * 0.19 / 6, abs=1e-7)


def test_ict_loss_weight_suppresses_large_negatives():
    easy, labels = _scores()
    easy[0, 0, 1] = 7.0  # a confident (likely false) negative gets w ~ 0
    out = ict_loss_from_scores(easy, easy.clone(), labels, labels.clone(), lam=0.1)
    assert out.negative.item() == pytest.approx(2 * (0.19 - 0.01) / 6, abs=1e-6)


def test_ict_loss_from_features_matches_manual_and_offset():
    torch.manual_seed(0)
    te, tr = torch.randn(2, 8), torch.randn(2, 8)
    imgs = [torch.randn(4, 8, requires_grad=True) for _ in range(3)]  # 4 images: 2 other ranks + 2 local
    le, lr = torch.rand(2, 3), torch.rand(2, 3)
    out = ict_loss(te, tr, imgs, le, lr, offset=2)
    cos = lambda t, i: F.cosine_similarity(t[:, None], i[None], dim=-1)  # noqa: E731
    e = torch.stack([cos(te, im) for im in imgs], 1)  # [2,3,4]
    r = torch.stack([cos(tr, im) for im in imgs], 1)
    pe = torch.stack([e[0, :, 2], e[1, :, 3]])
    pr = torch.stack([r[0, :, 2], r[1, :, 3]])
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 2] = mask[1, 3] = False
    ne, nr = e.permute(0, 2, 1)[mask], r.permute(0, 2, 1)[mask]
    want = ((pe - le) ** 2).mean() + ((pr - lr) ** 2).mean() + 0.1 * ((ne**2).mean() + (nr**2).mean())
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-5)
    out.loss.backward()
    assert imgs[0].grad is not None and imgs[0].grad.abs().sum() > 0


def test_hp_margin_loss_hand_value():
    s1, s2, s3 = torch.tensor([0.1, 0.5]), torch.tensor([0.4, 0.45]), torch.tensor([0.5, 0.9])
    assert hp_margin_loss(s1, s2, s3, 0.2).item() == pytest.approx(0.175)
    assert hp_margin_loss(s1, s2, s3, 0.2, "sum").item() == pytest.approx(0.35)
    one = torch.ones(2)
    ref = F.margin_ranking_loss(s2, s1, one, margin=0.2) + F.margin_ranking_loss(s3, s2, one, margin=0.2)
    assert hp_margin_loss(s1, s2, s3, 0.2).item() == pytest.approx(ref.item())


def test_triplet_accuracy_hand_values():
    # I2>I1: wins at rows 0 and 3, a tie at row 2 -> 2/4 with Table 1's tie rule (0), 2.5/4 with ties 1/2
    acc = triplet_accuracy([0, 1, 0.5, 0.2], [1, 0, 0.5, 0.3], [2, 2, 0.4, 0.1])
    assert acc["I2>I1"] == pytest.approx(0.5)
    assert acc["I3>I2"] == pytest.approx(0.5)
    assert acc["I3>I1"] == pytest.approx(0.5)
    assert acc["avg"] == pytest.approx(0.5)
    assert triplet_accuracy([0, 1, 0.5, 0.2], [1, 0, 0.5, 0.3], [2, 2, 0.4, 0.1], 0.5)["I2>I1"] == pytest.approx(0.625)
    assert pairwise_accuracy(torch.tensor([1.0]), torch.tensor([0.0])) == 1.0


def test_tie_aware_protocol_hand_values():
    p0 = [1.0, 1.0, 1.0, 1.0, 1.0]
    p1 = [0.5, 1.05, 1.5, 1.05, 0.0]
    lab = [1, 0.5, 1, 1, 0.5]
    assert list(tie_aware_credit(p0, p1, lab, 0.1)) == [1.0, 1.0, 0.0, 0.5, 0.5]
    assert tie_aware_accuracy(p0, p1, lab, 0.1) == pytest.approx(0.6)
    assert tie_aware_accuracy(p0, p1, lab, 0.0) == pytest.approx(0.4)
    t, acc = choose_tie_threshold(p0, p1, lab)
    assert (t, acc) == (pytest.approx(1.0), pytest.approx(0.7))
    t, acc = choose_tie_threshold(p0, p1, lab, grid=[0.0, 0.1, 0.2])
    assert (t, acc) == (pytest.approx(0.1), pytest.approx(0.6))


def test_pair_margin_loss_hand_value():
    s0, s1 = torch.tensor([0.5, 0.1, 0.3, 0.9]), torch.tensor([0.4, 0.6, 0.3, 0.0])
    lab = torch.tensor([1.0, 1.0, 0.5, 0.0])
    # pair 0: 0.2 - 0.1 = 0.1; pair 1: 0.2 - (-0.5) = 0.7; pair 2: tie, ignored; pair 3: 0.2 - (0.0 - 0.9) = 1.1
    assert pair_margin_loss(s0, s1, lab, 0.2).item() == pytest.approx((0.1 + 0.7 + 1.1) / 3)
    ties = pair_margin_loss(s0.requires_grad_(), s1, torch.full((4,), 0.5))
    assert ties.item() == 0.0 and ties.requires_grad
