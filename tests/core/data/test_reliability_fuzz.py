"""Bounded fuzz tests (fixed seeds): mutated image files and bytes, each a score, pixels or an error row, within
bounded memory. Every (seed format, mutation kind) pair and every extreme header shape is in the corpus
(`icthp_core.testing.fuzz.every_kind`), plus 1-3 chained random mutations; `bench/fuzz_decode.py` runs the large
campaign of docs/reliability.md."""

from __future__ import annotations

import pytest

from icthp_core.testing.fuzz import MUTATIONS, SHAPES, run, seed_images

#: the decoder paths the old 2,000-file corpus reached (its error kinds), each reached by the kind corpus too
ERROR_KINDS = {"cannot decode image", "not an image", "empty file", "over the limit", "pixels is over the limit"}


@pytest.fixture(scope="module")
def scorer(tiny_ict, tiny_hp):
    from icthp_core import load_scorer

    return load_scorer(tiny_ict, tiny_hp, device="cpu")


def _kind(error: str) -> str:
    for kind in sorted(ERROR_KINDS, key=len, reverse=True):
        if kind in error:
            return kind
    return error


def test_fuzzed_images_each_give_a_score_or_an_error_row(scorer):
    report = run(100, seed=0, scorer=scorer, kinds=True)
    seeds, pngs = seed_images(), [n for n in seed_images() if n.endswith(".png")]
    fixed = len(seeds) * len(MUTATIONS) + len(pngs) * (len(SHAPES) + 1) + 2  # seeds, kinds but shape, shapes, 2
    assert report["rows"] == report["files"] == fixed + 100  # one row per file: nothing aborted, nothing lost
    assert report["scored"] + report["error_rows"] == report["files"]
    errors = report["errors_by_file"]
    assert not [n for n in errors if n.startswith("seed_")]  # every format the corpus starts from scores
    assert {_kind(e) for e in errors.values()} == ERROR_KINDS, sorted(set(errors.values()))
    for png in pngs:  # header bombs refused before decoding: Pillow's limit, then the toolkit's own
        assert "over the limit of 40,000,000 pixels (Pillow" in errors[f"shape100000x100000_{png}"]
        assert "10000x10000 = 100,000,000 pixels is over the limit" in errors[f"shape10000x10000_{png}"]
    assert errors["empty_rgb.png"] == "empty file"
    assert report["scored"] > 40 and report["error_rows"] > 40  # the corpus really mixes both
    assert report["peak_rss_growth_mib"] < 400, report


def test_fuzzed_bytes_give_one_row_each_in_every_dataset_layout():
    from icthp_core.testing.fuzz import run_datasets

    report = run_datasets(60, seed=1, kinds=True)
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
