"""The two preference-accuracy protocols of Table 1, as plain functions on score arrays.

Scores of a triplet set are arrays ``[N, 3]``: column 0 = I1 (Pick-a-Pic loser), 1 = I2 (winner), 2 = I3 (image of
the refined prompt). Both protocols compare the pairs I2>I1, I3>I2, I3>I1 per triplet and report each pair's
accuracy and their mean ("avg"; with the same N for every pair this equals the upstream trainer's
``sum(correct) / (3 N)``).

- ``paper``: each metric's own scores; ICT-HP = ICT x sigmoid(HP logit) (= ICT x HP score, paper eq. 20);
  an equal pair counts 0, as the paper's Table 1 did (its ICT-groundtruth row can only win or tie on I2>I1 and
  reads 62.80: ties counted 0; docs/evaluation.md derives it). ``ties="half"`` counts them 1/2 instead.
- ``upstream``: what BarretBa/ICTHP's trainer computes for its validation accuracy (``icthp_task.py``):
  ICT-HP = ICT(easy prompt) x softmax over the triplet of the raw HP logits; a pair counts only when strictly
  greater (an equal pair counts 0). ``precision="bf16"`` rounds the scores, the softmax and the products to
  bfloat16 as the trainer's bf16 validation does, so pairs that tie in bf16 count 0 there too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from icthp_core.errors import ConfigError
from icthp_core.evaluation.keys import PAIR_KEYS, PAIRS

__all__ = [
    "TIES",
    "PRECISIONS",
    "round_to_precision",
    "hp_triplet_softmax",
    "PAIRS",
    "PAIR_KEYS",
    "Protocol",
    "PROTOCOLS",
    "get_protocol",
    "pair_credit",
    "triplet_credit",
    "triplet_accuracy_table",
    "ict_hp_paper",
    "ict_hp_upstream",
    "upstream_validation_accuracy",
]


@dataclass(frozen=True)
class Protocol:
    """How a triplet set is scored: the credit of an equal pair and the ICT-HP combination."""

    name: str
    tie_credit: float
    ict_hp: str  # "product" (ICT x sigmoid(HP)) or "triplet_softmax" (ICT x softmax_triplet(HP logits))
    description: str


#: credit of an equal pair, by the name `--ties` takes
TIES: dict[str, float] = {"zero": 0.0, "half": 0.5}
#: arithmetic of the protocol's scores: as computed (fp32 scores compared in float64) or rounded to bfloat16
PRECISIONS = ("fp32", "bf16")

PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol("paper", 0.0, "product", "paper Table 1: ICT-HP = ICT x sigmoid(HP); ties count 0"),
    "upstream": Protocol(
        "upstream",
        0.0,
        "triplet_softmax",
        "upstream trainer: ICT-HP = ICT x softmax over the triplet of HP logits; ties count 0",
    ),
}


def get_protocol(name: str, ties: str | None = None) -> Protocol:
    """The protocol called `name`, with its tie credit replaced when `ties` ("zero" | "half") is given.

    A one-line :class:`ConfigError` naming the choices otherwise.
    """
    if name not in PROTOCOLS:
        raise ConfigError(f"protocol {name!r}: choose from {', '.join(PROTOCOLS)}")
    proto = PROTOCOLS[name]
    if ties is None:
        return proto
    if ties not in TIES:
        raise ConfigError(f"ties {ties!r}: choose from {', '.join(TIES)}")
    credit = TIES[ties]
    if credit == proto.tie_credit:
        return proto
    desc = proto.description.replace(
        f"ties count {_credit_text(proto.tie_credit)}", f"ties count {_credit_text(credit)}"
    )
    return Protocol(proto.name, credit, proto.ict_hp, desc)


def _credit_text(credit: float) -> str:
    return "1/2" if credit == 0.5 else f"{credit:g}"


def _triplets(scores: np.ndarray | Sequence, what: str = "scores") -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"{what}: expected an array [N, 3] (I1, I2, I3), got shape {x.shape}")
    return x


def pair_credit(better: np.ndarray, worse: np.ndarray, tie_credit: float) -> np.ndarray:
    """Per-pair credit: 1 if better > worse, `tie_credit` if equal, else 0."""
    b, w = np.asarray(better, dtype=np.float64), np.asarray(worse, dtype=np.float64)
    return np.where(b > w, 1.0, np.where(b == w, tie_credit, 0.0))


def triplet_credit(scores: np.ndarray | Sequence, tie_credit: float) -> np.ndarray:
    """Credits [N, 3] of the pairs of PAIRS (columns in PAIR_KEYS order) for triplet scores [N, 3]."""
    s = _triplets(scores)
    return np.stack([pair_credit(s[:, b], s[:, w], tie_credit) for _, b, w in PAIRS], axis=1)


def triplet_accuracy_table(
    scores: np.ndarray | Sequence,
    tie_credit: float,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float] | int]:
    """Accuracy of each pair and "avg" with percentile-bootstrap intervals over triplets.

    Rows with a non-finite score (an unreadable image, a NaN or infinite model output) cannot be compared and are
    left out, never silently: ``"dropped"`` lists their row indices. Returns ``{"I2>I1": {"acc", "low", "high"},
    ..., "avg": {...}, "n": N used, "dropped": [row, ...]}``; ``n_boot=0`` skips the intervals.
    """
    s = _triplets(scores)
    finite = np.isfinite(s).all(axis=1)
    dropped = [int(i) for i in np.flatnonzero(~finite)]
    s = s[finite]
    credit = triplet_credit(s, tie_credit)
    n = credit.shape[0]
    per = np.concatenate([credit, credit.mean(axis=1, keepdims=True)], axis=1)  # [N, 4]: 3 pairs + avg
    keys = (*PAIR_KEYS, "avg")
    out: dict[str, dict[str, float] | int] = {}
    if n == 0:
        for k in keys:
            out[k] = {"acc": float("nan"), "low": float("nan"), "high": float("nan")}
        out["n"] = 0
        out["dropped"] = dropped
        return out
    acc = per.mean(axis=0)
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        boot = per[idx].mean(axis=1)  # [n_boot, 4]
        alpha = (1.0 - confidence) / 2.0
        lows, highs = np.quantile(boot, alpha, axis=0), np.quantile(boot, 1.0 - alpha, axis=0)
    else:
        lows = highs = np.full(4, np.nan)
    for j, k in enumerate(keys):
        out[k] = {"acc": float(acc[j]), "low": float(lows[j]), "high": float(highs[j])}
    out["n"] = int(n)
    out["dropped"] = dropped
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def ict_hp_paper(ict: np.ndarray | Sequence, hp_logits: np.ndarray | Sequence) -> np.ndarray:
    """Paper ICT-HP: ICT x sigmoid(HP logit), elementwise (any shape)."""
    return np.asarray(ict, dtype=np.float64) * _sigmoid(np.asarray(hp_logits, dtype=np.float64))


def round_to_precision(x: np.ndarray | Sequence, precision: str = "fp32") -> np.ndarray:
    """`x` as float64, each value first rounded to bfloat16 (round to nearest even) when `precision` is "bf16"."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    a = np.asarray(x, dtype=np.float64)
    if precision == "fp32":
        return a
    import torch

    return torch.from_numpy(a).to(torch.bfloat16).to(torch.float64).numpy()


def hp_triplet_softmax(hp_logits: np.ndarray | Sequence, precision: str = "fp32") -> np.ndarray:
    """Softmax over each triplet of raw HP logits [N, 3] (upstream's HP validation scores); in bf16 the logits
    and the probabilities are rounded to bfloat16 as a bf16 model computes them."""
    h = _triplets(hp_logits, "hp_logits")
    if precision == "bf16":
        import torch

        t = torch.from_numpy(round_to_precision(h, "bf16")).to(torch.bfloat16)
        return torch.softmax(t, dim=-1).to(torch.float64).numpy()
    round_to_precision(h, precision)  # validates the name
    with np.errstate(invalid="ignore"):  # a row with an infinite logit gives NaN: dropped and named later
        e = np.exp(h - h.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def ict_hp_upstream(
    ict: np.ndarray | Sequence, hp_logits: np.ndarray | Sequence, precision: str = "fp32"
) -> np.ndarray:
    """Upstream-trainer ICT-HP: ICT [N, 3] x softmax over each triplet of the raw HP logits [N, 3].

    `precision="bf16"`: ICT, the softmax and the product are each rounded to bfloat16 (upstream's bf16 validation).
    """
    i = round_to_precision(_triplets(ict, "ict"), precision)
    return round_to_precision(i * hp_triplet_softmax(hp_logits, precision), precision)


def upstream_validation_accuracy(
    ict: np.ndarray | Sequence, hp_logits: np.ndarray | Sequence, precision: str = "fp32"
) -> dict[str, float]:
    """The validation accuracy of the upstream HP trainer, for training loops.

    `ict`: cosine of the ICT features with the easy prompt [N, 3]; `hp_logits`: raw HP head outputs [N, 3].
    Returns ``{"accuracy", "I2>I1", "I3>I2", "I3>I1", "hp_accuracy"}``: ``accuracy`` = sum of strictly correct
    ICT-HP pairs / (3 N) with ICT-HP = ICT x softmax_triplet(HP logits); ``hp_accuracy`` likewise on HP alone.
    `precision="bf16"`: the values are compared as bf16 numbers, as upstream's bf16 validation (ties count 0).
    """
    icthp = triplet_credit(ict_hp_upstream(ict, hp_logits, precision), 0.0)
    hp = triplet_credit(hp_triplet_softmax(hp_logits, precision), 0.0)
    out = {"accuracy": float(icthp.mean()) if icthp.size else float("nan")}
    out.update({k: float(icthp[:, j].mean()) if icthp.size else float("nan") for j, k in enumerate(PAIR_KEYS)})
    out["hp_accuracy"] = float(hp.mean()) if hp.size else float("nan")
    return out
