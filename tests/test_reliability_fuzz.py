"""Bounded fuzz test: a few thousand mutated image files (fixed seed), each a score or an error row, bounded memory."""

from __future__ import annotations

import pytest

from icthp_core.testing.fuzz import run


@pytest.fixture(scope="module")
def scorer(tiny_ict, tiny_hp):
    from icthp_core import load_scorer

    return load_scorer(tiny_ict, tiny_hp, device="cpu")


def test_fuzzed_images_each_give_a_score_or_an_error_row(scorer):
    report = run(2000, seed=0, scorer=scorer)
    assert report["rows"] == report["files"] == 2012  # one row per file: nothing aborted, nothing lost
    assert report["scored"] + report["error_rows"] == report["files"]
    assert report["scored"] > 100 and report["error_rows"] > 100  # the corpus really mixes both
    assert "over the limit of 40,000,000 pixels" in report["error_kinds"]  # header bombs refused before decoding
    assert report["peak_rss_growth_mib"] < 400, report
