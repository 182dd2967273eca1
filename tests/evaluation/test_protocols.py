"""Both Table-1 protocols against values computed by hand (docs/evaluation.md walks through the same numbers)."""

import math

import numpy as np
import pytest

from icthp_core.evaluation.protocols import (
    get_protocol,
    ict_hp_paper,
    ict_hp_upstream,
    triplet_accuracy_table,
    upstream_validation_accuracy,
)

LN2 = math.log(2.0)
# three triplets (I1, I2, I3): ICT cosines and raw HP logits
ICT = np.array([[0.5, 0.6, 0.9], [0.5, 0.5, 0.75], [0.6, 0.5, 0.9]])
HP = np.array([[0.0, 0.0, LN2], [0.0, 0.0, 0.0], [0.0, 2.0, -2.0]])


def test_ict_hp_combinations_by_hand():
    # triplet 0: softmax(0, 0, ln2) = (1/4, 1/4, 1/2); sigmoid = (1/2, 1/2, 2/3)
    np.testing.assert_allclose(ict_hp_upstream(ICT, HP)[0], [0.125, 0.15, 0.45])
    np.testing.assert_allclose(ict_hp_paper(ICT, HP)[0], [0.25, 0.3, 0.6])
    # triplet 1: equal logits -> softmax 1/3 each, sigmoid 1/2 each
    np.testing.assert_allclose(ict_hp_upstream(ICT, HP)[1], [1 / 6, 1 / 6, 0.25])
    np.testing.assert_allclose(ict_hp_paper(ICT, HP)[1], [0.25, 0.25, 0.375])


def test_upstream_protocol_by_hand():
    # per pair (I2>I1, I3>I2, I3>I1): t0 (1,1,1); t1 I2 == I1 -> 0, (0,1,1); t2 (0.07, 0.43, 0.01) -> (1,0,0)
    acc = upstream_validation_accuracy(ICT, HP)
    assert acc["I2>I1"] == pytest.approx(2 / 3)
    assert acc["I3>I2"] == pytest.approx(2 / 3)
    assert acc["I3>I1"] == pytest.approx(2 / 3)
    assert acc["accuracy"] == pytest.approx(6 / 9)  # sum(correct) / (3 N)
    # HP alone on raw logits, ties 0: t0 (0,1,1), t1 (0,0,0), t2 (1,0,0)
    assert acc["hp_accuracy"] == pytest.approx(3 / 9)
    table = triplet_accuracy_table(ict_hp_upstream(ICT, HP), get_protocol("upstream").tie_credit, n_boot=0)
    assert table["avg"]["acc"] == pytest.approx(acc["accuracy"])


def test_paper_protocol_by_hand():
    # t0 (1,1,1); t1 tie on I2>I1 counts 1/2 -> (0.5,1,1); t2 (0.3, 0.44, 0.107) -> (1,0,0)
    t = triplet_accuracy_table(ict_hp_paper(ICT, HP), get_protocol("paper").tie_credit, n_boot=200)
    assert t["I2>I1"]["acc"] == pytest.approx(2.5 / 3)
    assert t["I3>I2"]["acc"] == pytest.approx(2 / 3)
    assert t["avg"]["acc"] == pytest.approx(6.5 / 9)
    assert t["n"] == 3
    assert t["avg"]["low"] <= t["avg"]["acc"] <= t["avg"]["high"]


def test_nan_rows_dropped_and_bad_shapes():
    s = np.array([[0.1, 0.2, 0.3], [np.nan, 0.2, 0.3]])
    assert triplet_accuracy_table(s, 0.5, n_boot=0)["n"] == 1
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        triplet_accuracy_table(np.zeros((2, 2)), 0.5)
    with pytest.raises(ValueError, match="choose from paper, upstream"):
        get_protocol("nope")
