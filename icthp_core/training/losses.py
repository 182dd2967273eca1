"""Training losses of the ICT and HP reward models (paper eq. 9-13).

ICT (eq. 9-12). The score is s(P, I) = cosine(text features, image features): exactly what the published ICT
model outputs at inference (no logit scale). With B triplets, `easy[j, k, i]` = s(P_easy of triplet j, I_k of
triplet i) for k in (I1, I2, I3); likewise `refined`. Positives are j == i, in-batch negatives j != i
(target 0)::

    L = mean_{i,k} (easy[i,k,i] - E_k,i)^2 + mean_{i,k} (refined[i,k,i] - R_k,i)^2
        + lambda * ( mean_{j!=i,k} w(easy[j,k,i]) easy[j,k,i]^2
                     + mean_{j!=i,k} w(refined[j,k,i]) refined[j,k,i]^2 )
    w(y) = 1 / (1 + exp(alpha (|y| - beta)))          alpha = 20, beta = 6, lambda = 0.1

The paper writes sums; means (as in the upstream trainer) keep the loss scale independent of the batch size.
w(y) is kept exactly as published; for cosine scores (|y| <= 1 < beta) it is ~1, i.e. it only matters if the
scores are scaled (set `score_scale`, e.g. a 1/tau temperature, in :func:`ict_scores`).

HP, upstream recipe (BarretBa/ICTHP `icthp_criterion.py`, `loss_hp` + `loss_icthp`): the HP loss above with
m = 0.3, plus an ICT-HP term on q = ICT_easy * softmax over the triplet of the raw HP logits (the frozen ICT
model's cosines with the easy prompt): sum over the (gathered) batch of max(0, m - (q2 - q1)) + max(0, m - (q3 - q2)).
A sum grows with the batch it runs over (upstream: 8 GPUs x 32 = 256); `reference_batch` rescales it to that batch.

HP (eq. 13): mean hinge max(0, -(s2 - s1) + m) + mean hinge max(0, -(s3 - s2) + m), m = 0.2, on the HP scores
of I1 < I2 < I3 (the trainer uses the head's pre-sigmoid output by default, as upstream; see `train/`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "ICTLossOutput",
    "negative_weight",
    "ict_scores",
    "ict_loss_from_scores",
    "ict_loss",
    "hp_margin_loss",
    "pair_margin_loss",
    "icthp_margin_loss",
    "hp_stage_loss",
    "gather_batch",
]


@dataclass
class ICTLossOutput:
    loss: torch.Tensor
    mse: torch.Tensor
    negative: torch.Tensor


def negative_weight(y: torch.Tensor, alpha: float = 20.0, beta: float = 6.0) -> torch.Tensor:
    """w(y) = 1 / (1 + exp(alpha (|y| - beta))) (eq. 10), computed stably as sigmoid(-alpha (|y| - beta))."""
    return torch.sigmoid(-alpha * (y.abs() - beta))


def ict_scores(
    text_features: torch.Tensor,
    image_features: Sequence[torch.Tensor],
    score_scale: float = 1.0,
) -> torch.Tensor:
    """Score tensor [B_text, 3, B_img]: `score_scale` * cosine(text j, image k of triplet i)."""
    t = F.normalize(text_features, dim=-1)
    imgs = torch.stack([F.normalize(f, dim=-1) for f in image_features], dim=0)  # [3, B, D]
    return score_scale * torch.einsum("jd,kid->jki", t, imgs)


def _split(scores: torch.Tensor, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positives [B, 3] and negatives [N_neg, 3]; text row j is triplet `offset + j` of the image axis."""
    bt, three, bi = scores.shape
    if three != 3:
        raise ValueError(f"ICT scores must have shape [B_text, 3, B_img], got {tuple(scores.shape)}")
    rows = torch.arange(bt, device=scores.device)
    cols = rows + offset
    pos = scores[rows, :, cols]  # [B, 3]
    mask = torch.ones(bt, bi, dtype=torch.bool, device=scores.device)
    mask[rows, cols] = False
    neg = scores.permute(0, 2, 1)[mask]  # [N_neg, 3]
    return pos, neg


def ict_loss_from_scores(
    easy: torch.Tensor,
    refined: torch.Tensor,
    easy_labels: torch.Tensor,
    refined_labels: torch.Tensor,
    lam: float = 0.1,
    alpha: float = 20.0,
    beta: float = 6.0,
    offset: int = 0,
) -> ICTLossOutput:
    """ICT loss (eq. 9-12) from score tensors [B_text, 3, B_img] and labels [B_text, 3].

    `offset` is the index of this rank's first triplet when the image axis holds all ranks' images (gathered
    negatives); 0 for a single process.
    """
    pe, ne = _split(easy, offset)
    pr, nr = _split(refined, offset)
    mse = F.mse_loss(pe, easy_labels.to(pe.dtype)) + F.mse_loss(pr, refined_labels.to(pr.dtype))
    if ne.numel():
        negative = (negative_weight(ne, alpha, beta) * ne.square()).mean() + (
            negative_weight(nr, alpha, beta) * nr.square()
        ).mean()
    else:
        negative = mse.new_zeros(())
    return ICTLossOutput(loss=mse + lam * negative, mse=mse.detach(), negative=negative.detach())


def ict_loss(
    easy_text: torch.Tensor,
    refined_text: torch.Tensor,
    image_features: Sequence[torch.Tensor],
    easy_labels: torch.Tensor,
    refined_labels: torch.Tensor,
    lam: float = 0.1,
    alpha: float = 20.0,
    beta: float = 6.0,
    score_scale: float = 1.0,
    offset: int = 0,
) -> ICTLossOutput:
    """ICT loss from features: text [B, D] (P_easy, P_ref), images (I1, I2, I3) each [B_img, D]."""
    easy = ict_scores(easy_text, image_features, score_scale)
    refined = ict_scores(refined_text, image_features, score_scale)
    return ict_loss_from_scores(easy, refined, easy_labels, refined_labels, lam, alpha, beta, offset)


def hp_margin_loss(
    s1: torch.Tensor, s2: torch.Tensor, s3: torch.Tensor, margin: float = 0.2, reduction: str = "mean"
) -> torch.Tensor:
    """Margin ranking loss of eq. 13 for scores of I1 (worst), I2, I3 (best), each [B]."""
    l21 = (margin - (s2 - s1)).clamp_min(0)
    l32 = (margin - (s3 - s2)).clamp_min(0)
    if reduction == "mean":
        return l21.mean() + l32.mean()
    if reduction == "sum":
        return l21.sum() + l32.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def pair_margin_loss(s0: torch.Tensor, s1: torch.Tensor, label_0: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """Margin ranking loss on preference pairs (label_0: 1 = image 0 preferred, 0 = image 1, 0.5 = tie).

    mean over non-tied pairs of max(0, m - (s_preferred - s_other)); tied pairs contribute 0 (the loss stays
    connected to the graph when every pair is a tie, as DDP needs).
    """
    decisive = label_0 != 0.5
    better = torch.where(label_0 > 0.5, s0, s1)
    worse = torch.where(label_0 > 0.5, s1, s0)
    hinge = (margin - (better - worse)).clamp_min(0) * decisive
    return hinge.sum() / decisive.sum().clamp_min(1)


def icthp_margin_loss(
    ict: torch.Tensor,
    hp_logits: torch.Tensor,
    margin: float = 0.3,
    reduction: str = "sum",
    reference_batch: int | None = None,
) -> torch.Tensor:
    """Upstream's ICT-HP term: q = ict * softmax_triplet(hp_logits) ([B, 3] each, columns I1, I2, I3) and the hinges
    h = max(0, m - (q2 - q1)) + max(0, m - (q3 - q2)) per triplet.

    reduction "sum": sum over the B triplets, as upstream (so its weight is proportional to the batch it is summed
    over: 8 GPUs x 32 = 256 upstream); with `reference_batch` R the sum is scaled by R / B, i.e. R x the mean, which
    equals upstream's term at B = R and keeps its effective weight on fewer GPUs. reduction "mean": mean over B.
    """
    if ict.shape != hp_logits.shape or ict.ndim != 2 or ict.shape[1] != 3:
        raise ValueError(f"ict and hp_logits must both be [B, 3], got {tuple(ict.shape)}, {tuple(hp_logits.shape)}")
    q = ict.to(hp_logits.dtype) * torch.softmax(hp_logits, dim=-1)
    h = (margin - (q[:, 1] - q[:, 0])).clamp_min(0) + (margin - (q[:, 2] - q[:, 1])).clamp_min(0)
    if reduction == "mean":
        return h.mean()
    if reduction != "sum":
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    return h.sum() * (reference_batch / h.shape[0]) if reference_batch else h.sum()


def hp_stage_loss(
    hp_logits: torch.Tensor,
    margin: float,
    ict: torch.Tensor | None = None,
    hp_weight: float = 1.0,
    icthp_weight: float = 0.0,
    icthp_reduction: str = "sum",
    reference_batch: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(total, hp term, ict-hp term) of the HP stage on [B, 3] logits of (I1, I2, I3) (already gathered if DDP).

    total = hp_weight * mean margin loss (eq. 13) + icthp_weight * :func:`icthp_margin_loss` (needs `ict`;
    `icthp_reduction` and `reference_batch` as there).
    """
    hp = hp_margin_loss(hp_logits[:, 0], hp_logits[:, 1], hp_logits[:, 2], margin)
    if not icthp_weight:
        return hp_weight * hp, hp.detach(), None
    if ict is None:
        raise ValueError("the ICT-HP loss term needs the frozen ICT model's scores (set ict_model)")
    icthp = icthp_margin_loss(ict, hp_logits, margin, icthp_reduction, reference_batch)
    return hp_weight * hp + icthp_weight * icthp, hp.detach(), icthp.detach()


def gather_batch(hp: torch.Tensor, ict: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Every process's [B, 3] HP logits (differentiable all_gather, as upstream) and ICT scores, rank order."""
    import torch.distributed.nn.functional as dist_fn

    hp = torch.cat(dist_fn.all_gather(hp.contiguous()))
    if ict is not None:
        parts = [torch.empty_like(ict) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, ict.contiguous())
        ict = torch.cat(parts)
    return hp, ict
