"""Names of the reported accuracies (no numpy or torch: training configs and job parsers read them)."""

from __future__ import annotations

__all__ = ["PAIRS", "PAIR_KEYS", "TRIPLET_KEYS"]

#: (name, better column, worse column) of the three compared pairs, in Table 1 order
PAIRS: tuple[tuple[str, int, int], ...] = (("I2>I1", 1, 0), ("I3>I2", 2, 1), ("I3>I1", 2, 0))
PAIR_KEYS: tuple[str, ...] = tuple(p[0] for p in PAIRS)
#: triplet accuracy keys: the three pairs and their mean
TRIPLET_KEYS: tuple[str, ...] = (*PAIR_KEYS, "avg")
