"""ICT training labels (paper eq. 2-8).

For a triplet (I1 = loser, I2 = winner, I3 = image of the refined prompt) with prompts P_easy and P_ref::

    C(I, P) = min(CLIP(I, P) / theta, 1)                         (eq. 2)
    E3 = 1,  E2 = C(I2, P_easy),  E1 = min(C(I1, P_easy), E2)    (eq. 3-5)
    R3 = 1,  R2 = E2 * CLIP(P_easy, P_ref),  R1 = E1 * CLIP(P_easy, P_ref)   (eq. 6-8)

CLIP(I, P) is the image-text cosine and CLIP(P_easy, P_ref) the text-text cosine of a base CLIP model
(LAION CLIP-H in the paper). Labels are clamped to [0, 1] (a cosine can in principle be negative; labels are
regression targets for a cosine in [0, 1]).

theta is not published. :func:`auto_theta` chooses it from the data: I3 images are by construction "perfect"
for P_easy, so theta is set to a low percentile (default the 10th) of CLIP(I3, P_easy); then ~90% of I3
images would reach C = 1 and I1/I2 are measured relative to what a perfect image scores.

Note: the upstream dataset fills E2 from the R1 column; here every label is computed from its own definition
and loaded from its own column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from icthp_core.errors import ConfigError, DataError

__all__ = [
    "ICTLabels",
    "alignment_score",
    "auto_theta",
    "ict_labels",
    "clip_similarities",
    "build_ict_labels",
]


@dataclass
class ICTLabels:
    """Per-triplet labels, each a float tensor [N]. E3 = R3 = 1 always."""

    E1: torch.Tensor
    E2: torch.Tensor
    R1: torch.Tensor
    R2: torch.Tensor

    @property
    def E3(self) -> torch.Tensor:  # noqa: N802 - paper notation
        return torch.ones_like(self.E1)

    @property
    def R3(self) -> torch.Tensor:  # noqa: N802 - paper notation
        return torch.ones_like(self.R1)

    def easy(self) -> torch.Tensor:
        """[N, 3] targets (E1, E2, E3) for P_easy against (I1, I2, I3)."""
        return torch.stack([self.E1, self.E2, self.E3], dim=-1)

    def refined(self) -> torch.Tensor:
        """[N, 3] targets (R1, R2, R3) for P_ref against (I1, I2, I3)."""
        return torch.stack([self.R1, self.R2, self.R3], dim=-1)

    def as_dict(self) -> dict[str, list[float]]:
        return {k: getattr(self, k).tolist() for k in ("E1", "E2", "R1", "R2")}


def _t(x: torch.Tensor | Sequence[float] | float) -> torch.Tensor:
    return torch.as_tensor(x).float()


def alignment_score(clip_sim: torch.Tensor, theta: float) -> torch.Tensor:
    """C(I, P) = min(CLIP(I, P) / theta, 1), clamped below at 0 (eq. 2)."""
    if not theta > 0:
        raise ConfigError(f"theta must be > 0, got {theta!r}")
    return (_t(clip_sim) / theta).clamp(0.0, 1.0)


def ict_labels(
    clip_i1_easy: torch.Tensor,
    clip_i2_easy: torch.Tensor,
    clip_easy_ref: torch.Tensor,
    theta: float,
) -> ICTLabels:
    """ICT labels from CLIP similarities (eq. 2-8).

    Args:
        clip_i1_easy: CLIP(I1, P_easy) cosine, [N].
        clip_i2_easy: CLIP(I2, P_easy) cosine, [N].
        clip_easy_ref: CLIP(P_easy, P_ref) text-text cosine, [N].
        theta: alignment threshold (> 0), e.g. from :func:`auto_theta`.
    """
    e2 = alignment_score(clip_i2_easy, theta)
    e1 = torch.minimum(alignment_score(clip_i1_easy, theta), e2)
    text_sim = _t(clip_easy_ref).clamp(0.0, 1.0)
    return ICTLabels(E1=e1, E2=e2, R1=e1 * text_sim, R2=e2 * text_sim)


def auto_theta(clip_i3_easy: torch.Tensor, percentile: float = 10.0) -> float:
    """theta = the `percentile`-th percentile (0-100, linear interpolation) of CLIP(I3, P_easy)."""
    values = _t(clip_i3_easy).flatten()
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        raise DataError("auto_theta: no finite CLIP(I3, P_easy) values")
    if not 0.0 <= percentile <= 100.0:
        raise ConfigError(f"auto_theta: percentile must be in [0, 100], got {percentile}")
    theta = float(torch.quantile(values.double(), percentile / 100.0))
    if theta <= 0:
        raise DataError(
            f"auto_theta: percentile {percentile} of CLIP(I3, P_easy) is {theta:.4g} <= 0; give theta explicitly"
        )
    return theta


@torch.no_grad()
def clip_similarities(
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    pixels: Sequence[torch.Tensor],
    easy_tokens: torch.Tensor,
    ref_tokens: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Cosines needed by the labels for one batch.

    Args:
        encode_image / encode_text: a base CLIP's projected feature functions (e.g. `ICTModel.encode_image`).
        pixels: (I1, I2, I3) normalised pixel batches [B, 3, H, W].
        easy_tokens / ref_tokens: token ids [B, 77].
    Returns: float32 CPU tensors [B] `i1_easy`, `i2_easy`, `i3_easy`, `easy_ref`.
    """
    te = torch.nn.functional.normalize(encode_text(easy_tokens).float(), dim=-1)
    tr = torch.nn.functional.normalize(encode_text(ref_tokens).float(), dim=-1)
    out = {}
    for name, px in zip(("i1_easy", "i2_easy", "i3_easy"), pixels, strict=True):
        fi = torch.nn.functional.normalize(encode_image(px).float(), dim=-1)
        out[name] = (fi * te).sum(-1).cpu()
    out["easy_ref"] = (te * tr).sum(-1).cpu()
    return out


def build_ict_labels(
    sims: dict[str, torch.Tensor], theta: float | None = None, percentile: float = 10.0
) -> tuple[ICTLabels, float]:
    """Labels for a whole dataset from :func:`clip_similarities` outputs (concatenated).

    `theta=None` chooses it with :func:`auto_theta` on `sims["i3_easy"]`. Returns (labels, theta).
    """
    if theta is None:
        theta = auto_theta(sims["i3_easy"], percentile)
    return ict_labels(sims["i1_easy"], sims["i2_easy"], sims["easy_ref"], theta), float(theta)
