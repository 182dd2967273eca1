"""The local executor streams a dataset shard (`iter_record_batches`): it reads only a few batches ahead of what it
has written, keeps the record order, skips records already done (resume) and marks the shard complete with its last
batch (an empty shard too)."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from icthp_core.scale import pipeline
from icthp_core.scale.pipeline import LocalRun, Summary, _run_dataset_shard


class _Scorer:
    """No model: every record carries an `error`, so nothing is decoded or scored (the pipeline's bookkeeping only)."""

    metrics = ["hp"]
    needs_prompt = False
    preprocess_modes: list[str] = []


class _Sink:
    def __init__(self, log: list):
        self.log = log

    def write(self, shard: int, rows: list[dict], complete: bool) -> None:
        self.log.append(("write", [r["image"] for r in rows], complete))


def _run(monkeypatch, n: int, batch_size: int, done: set, pool=None, workers: int = 0) -> list:
    log: list = []

    def batches(shard, size):
        assert size == batch_size
        for s in range(0, n, size):
            log.append(("read", s))
            yield [{"image": f"r{k}", "prompt": None, "error": "e"} for k in range(s, min(s + size, n))]

    monkeypatch.setattr(pipeline, "iter_record_batches", batches)
    run = LocalRun(_Scorer(), batch_size=batch_size, workers=workers)
    _run_dataset_shard(0, {"kind": "parquet"}, run, pool, _Sink(log), done, Summary(), None)
    return log


def _check(log: list, n: int, skipped: int, bound: int) -> None:
    """Rows r<skipped>..r<n-1> written in order, the last write complete, at most `bound` batches read ahead."""
    writes = [e for e in log if e[0] == "write"]
    assert [i for w in writes for i in w[1]] == [f"r{k}" for k in range(skipped, n)]
    assert [w[2] for w in writes] == [False] * (len(writes) - 1) + [True]
    reads = written = 0
    for e in log:  # batches read but not yet written stay bounded: the shard is never read whole
        reads += e[0] == "read"
        written += e[0] == "write"
        assert reads - written <= bound


@pytest.mark.parametrize("workers", [0, 1])
def test_dataset_shard_is_streamed_in_order(monkeypatch, workers):
    pool = mp.get_context("fork").Pool(1) if workers else None
    try:
        log = _run(monkeypatch, 40, 2, set(), pool, workers)
    finally:
        if pool is not None:
            pool.terminate()
    _check(log, 40, 0, bound=2 if not workers else 2 * workers + 2)


def test_resume_skips_done_records_and_an_empty_shard_is_complete(monkeypatch):
    from icthp_core.data.rows import row_key

    done = {row_key(f"r{k}", None) for k in range(5)}
    _check(_run(monkeypatch, 9, 2, done), 9, 5, bound=2 + 2)  # + the two batches that are all done
    assert _run(monkeypatch, 0, 2, set()) == [("write", [], True)]
    assert _run(monkeypatch, 4, 2, {row_key(f"r{k}", None) for k in range(4)})[-1] == ("write", [], True)
