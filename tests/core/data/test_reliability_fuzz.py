"""Bounded fuzz test: a few thousand mutated image files (fixed seed), each a score or an error row, bounded memory."""

from __future__ import annotations

import pytest

from icthp_core.testing.fuzz import run


@pytest.fixture(scope="module")
def scorer(tiny_ict, tiny_hp):
    from icthp_core import load_scorer

    return load_scorer(tiny_ict, tiny_hp, device="cpu")


@pytest.mark.slow  # measured: over the 10 s budget (tests/durations.json)
def test_fuzzed_images_each_give_a_score_or_an_error_row(scorer):
    report = run(2000, seed=0, scorer=scorer)
    assert report["rows"] == report["files"] == 2012  # one row per file: nothing aborted, nothing lost
    assert report["scored"] + report["error_rows"] == report["files"]
    assert report["scored"] > 100 and report["error_rows"] > 100  # the corpus really mixes both
    assert "over the limit of 40,000,000 pixels" in report["error_kinds"]  # header bombs refused before decoding
    assert report["peak_rss_growth_mib"] < 400, report


@pytest.mark.slow
def test_fuzzed_bytes_give_one_row_each_in_every_dataset_layout():
    from icthp_core.testing.fuzz import run_datasets

    report = run_datasets(240, seed=1)
    n = report["items"]
    decoded = report["bytes"]["decoded"]
    assert 0 < decoded < n  # the corpus mixes good and bad bytes
    for layout in ("parquet", "webdataset"):  # the same bytes, the same outcome as a serve request or an upload
        assert report[layout]["rows"] == n and report[layout]["errors"] == n - decoded, report
    cut = report["truncated"]  # rows for the samples before the cut, the sample cut through and the rest: no abort
    assert n // 2 < cut["rows"] < n and cut["errors"] > 0, report
    assert report["peak_rss_growth_mib"] < 400, report


def test_fuzzed_metadata_is_a_record_none_or_one_error():
    from icthp_core.testing.fuzz import run_metadata

    report = run_metadata(1500, seed=2)
    assert report.get("unexpected", 0) == 0, report["unexpected_examples"]
    assert report["record"] > 100 and report["error"] > 100 and report["none"] > 100, report
