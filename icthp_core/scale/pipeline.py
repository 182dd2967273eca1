"""Sharded batch scoring: plan shards -> read -> decode + preprocess (CPU) -> score (models loaded once) -> write.

`engine="local"` runs the stages in this process (decoding in a process pool); `engine="ray"` runs them as a Ray
Data pipeline: read and decode as CPU tasks, scoring on an actor pool (one actor per GPU, or N CPU actors), rows
gathered per shard and written as `part-NNNNN.parquet` files. Both call the same read/decode/score functions.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from icthp_core.data.sources import decode_records, read_shard

STAGES = ("read", "decode", "score")


@dataclass
class Summary:
    """What a run did: rows and errors written, shards skipped (resume), seconds spent per stage (summed over
    workers) and wall time."""

    rows: int = 0
    errors: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    wall_seconds: float = 0.0

    def add(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] += float(seconds)

    def lines(self) -> list[str]:
        out = [
            f"rows {self.rows} (errors {self.errors}); shards written {self.shards_done}, "
            f"skipped (already done) {self.shards_skipped}; wall {self.wall_seconds:.1f} s, "
            f"{self.rows / max(self.wall_seconds, 1e-9):.1f} images/s"
        ]
        per = ", ".join(
            f"{s} {self.rows / t:.1f} images/s per worker ({t:.1f} worker-s)"
            for s, t in self.stage_seconds.items()
            if t > 0
        )
        if per:
            out.append(f"stages: {per}")
        return out


def score_decoded(scorer, records: Sequence[dict], errors: list[str | None], pixels: dict[str, np.ndarray]) -> list:
    """Score rows for decoded records: `{"image", "prompt", kept columns..., <metric>: float, "error": None}`;
    records that failed to decode (or lack a prompt the metrics need) keep their error and get no scores."""
    import torch

    errors = list(errors)
    needs_prompt = scorer.needs_prompt
    for i, rec in enumerate(records):
        if errors[i] is None and needs_prompt and not (isinstance(rec.get("prompt"), str) and rec["prompt"].strip()):
            errors[i] = f"{rec['image']}: no prompt (metrics {scorer.metrics} need one)"
    ok = [i for i, e in enumerate(errors) if e is None]
    scores = {}
    if ok:
        idx = np.asarray(ok)
        pix = {m: torch.from_numpy(np.ascontiguousarray(v[idx])) for m, v in pixels.items()}
        prompts = [records[i]["prompt"] for i in ok] if needs_prompt else None
        scores = scorer.score_pixels(pix, prompts)
    rows, k = [], 0
    for i, rec in enumerate(records):
        row = {key: v for key, v in rec.items() if key not in ("path", "data", "error")}
        if errors[i] is None:
            row.update({m: float(scores[m][k]) for m in scorer.metrics})
            k += 1
        row["error"] = errors[i]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ local engine
def _decode_chunk(args):
    records, modes = args
    t = time.perf_counter()
    errors, pixels = decode_records(records, modes)
    return errors, pixels, time.perf_counter() - t


def run_local(shards, scorer, sink, batch_size: int = 32, workers: int = 2, skip=None, progress=True, on_rows=None):
    """Score every shard not in `sink.done()` in this process; `sink.write_shard(i, rows)` after each shard.

    `skip(record) -> bool` drops already-written rows (row-level resume of .jsonl/.csv/.parquet files).
    """
    summary, t0 = Summary(), time.perf_counter()
    done = sink.done()
    todo = [i for i in range(len(shards)) if i not in done]
    summary.shards_skipped = len(shards) - len(todo)
    pool = None
    if workers > 0:
        import multiprocessing as mp

        pool = mp.get_context("fork" if sys.platform == "linux" else "spawn").Pool(workers)
    bar = _bar(len(todo), progress)
    modes = scorer.preprocess_modes
    try:
        for i in todo:
            t = time.perf_counter()
            records = read_shard(shards[i])
            if skip is not None:
                records = [r for r in records if not skip(r)]
            summary.add("read", time.perf_counter() - t)
            chunks = [(records[s : s + batch_size], modes) for s in range(0, len(records), batch_size)]
            decoded = pool.imap(_decode_chunk, chunks) if pool is not None else map(_decode_chunk, chunks)
            rows = []
            for (chunk, _), (errors, pixels, dt) in zip(chunks, decoded, strict=True):
                summary.add("decode", dt)
                t = time.perf_counter()
                rows += score_decoded(scorer, chunk, errors, pixels)
                summary.add("score", time.perf_counter() - t)
            sink.write_shard(i, rows)
            _count(summary, rows, on_rows)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(rows=summary.rows, errors=summary.errors)
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _count(summary: Summary, rows: list[dict], on_rows) -> None:
    summary.rows += len(rows)
    summary.errors += sum(r["error"] is not None for r in rows)
    summary.shards_done += 1
    if on_rows is not None:
        on_rows(rows)


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="shard", desc="scoring")


# ------------------------------------------------------------------------------------------------ ray engine
#: with this set to 0 before `import ray`, a local Ray binds its services to 127.0.0.1 (single node only)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join `address` (a running cluster, e.g. 'auto' or 'ray://head:10001'), else start a local Ray on loopback
    (127.0.0.1) without the dashboard. A no-op when Ray is already initialised in this process."""
    if not address and "ray" not in sys.modules:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
    except ImportError:
        raise ValueError('--engine ray needs Ray: pip install "icthp[scale]"') from None
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level="WARNING")
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level="WARNING")


def _read_rows(item: dict) -> list[dict]:
    """Ray flat_map: one shard -> its records (+ shard id, index, count, read time); a marker row if empty."""
    t = time.perf_counter()
    records = read_shard(json.loads(item["spec"]))
    dt = (time.perf_counter() - t) / max(len(records), 1)
    if not records:
        return [{"shard": item["shard"], "idx": -1, "n": 0, "rec": b"", "data": b"", "has_data": False, "_t_read": dt}]
    out = []
    for j, rec in enumerate(records):
        meta = {k: v for k, v in rec.items() if k != "data"}
        out.append(
            {
                "shard": item["shard"],
                "idx": j,
                "n": len(records),
                "rec": json.dumps(meta, default=str).encode(),
                "data": rec.get("data") or b"",
                "has_data": rec.get("data") is not None,
                "_t_read": dt,
            }
        )
    return out


def _records(batch: dict) -> list[dict]:
    recs = []
    for meta, data, has in zip(batch["rec"], batch["data"], batch["has_data"], strict=True):
        rec = json.loads(bytes(meta)) if len(meta) else {"image": "", "prompt": None, "error": "empty shard"}
        rec["data"] = bytes(data) if has else None
        recs.append(rec)
    return recs


def _decode_batch(batch: dict, modes: Sequence[str]) -> dict:
    """Ray map_batches (CPU tasks): records -> pixels per preprocessing mode + error."""
    t = time.perf_counter()
    errors, pixels = decode_records(_records(batch), modes)
    dt = (time.perf_counter() - t) / max(len(errors), 1)
    out = {k: batch[k] for k in ("shard", "idx", "n", "rec", "_t_read")}
    out["error"] = np.array(["" if e is None else e for e in errors], dtype=object)
    out.update({f"px_{m}": v for m, v in pixels.items()})
    out["_t_decode"] = np.full(len(errors), dt)
    return out


class _ScoreActor:
    """Ray actor (one per GPU or N on CPU): loads the models once, scores decoded batches."""

    def __init__(self, metrics, sources, device, dtype):
        from icthp_core.scoring.scorer import MultiScorer

        self.scorer = MultiScorer(metrics, sources, device=device, dtype=dtype)
        pid_dir = os.environ.get("ICTHP_SCALE_PID_DIR")  # lets tests find (and kill) a scoring actor
        if pid_dir:
            open(os.path.join(pid_dir, f"{os.getpid()}.pid"), "w").close()

    def __call__(self, batch: dict) -> dict:
        t = time.perf_counter()
        recs = [json.loads(bytes(m)) if len(m) else {"image": "", "prompt": None} for m in batch["rec"]]
        errors = [e or None for e in batch["error"]]
        pixels = {k[3:]: v for k, v in batch.items() if k.startswith("px_")}
        rows = score_decoded(self.scorer, recs, errors, pixels)
        dt = (time.perf_counter() - t) / max(len(rows), 1)
        return {
            "shard": batch["shard"],
            "idx": batch["idx"],
            "n": batch["n"],
            "row": np.array([json.dumps(r, default=str) for r in rows], dtype=object),
            "_t_read": batch["_t_read"],
            "_t_decode": batch["_t_decode"],
            "_t_score": np.full(len(rows), dt),
        }


def run_ray(
    shards,
    metrics: Sequence[str],
    sources: dict[str, str],
    sink,
    device: str | None = None,
    dtype: str = "fp32",
    batch_size: int = 32,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    address: str | None = None,
    progress: bool = True,
    on_rows=None,
):
    """The Ray Data pipeline over the shards not yet in `sink` (see the module docstring)."""
    init_ray(address)
    import ray

    from icthp_core.scoring.registry import METRICS, required_base_metrics

    summary, t0 = Summary(), time.perf_counter()
    done = sink.done()
    todo = [i for i in range(len(shards)) if i not in done]
    summary.shards_skipped = len(shards) - len(todo)
    if not todo:
        summary.wall_seconds = time.perf_counter() - t0
        return summary
    cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if cluster_gpus and (device is None or str(device).startswith("cuda")) else 0.0
    if actors is None:
        actors = max(int(cluster_gpus / gpus_per_actor), 1) if gpus_per_actor else 2
    actor_device = device or ("cuda" if gpus_per_actor else "cpu")
    modes = sorted({METRICS[m].preprocess for m in required_base_metrics(metrics)})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    items = [{"shard": i, "spec": json.dumps(shards[i])} for i in todo]
    # logical CPUs: on a small machine, leave room for read/decode tasks beside the CPU scoring actors
    cpus = float(ray.cluster_resources().get("CPU", 1))
    task_cpus = 1.0 if cpus >= 8 else 0.5
    actor_cpus = 0.0 if gpus_per_actor else min(1.0, max(cpus - task_cpus, 0.1) / actors)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.flat_map(_read_rows, num_cpus=task_cpus)
    ds = ds.map_batches(_decode_batch, fn_kwargs={"modes": modes}, batch_size=batch_size, num_cpus=task_cpus)
    ds = ds.map_batches(
        _ScoreActor,
        fn_constructor_kwargs={"metrics": list(metrics), "sources": dict(sources), "device": actor_device}
        | {"dtype": dtype},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=actor_cpus,
        num_gpus=gpus_per_actor or None,
    )  # Ray Data restarts dead actors and retries their batches (max_restarts=-1, max_task_retries=-1)
    pending: dict[int, dict[int, dict]] = {}
    bar = _bar(len(todo), progress)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for s, j, n, row, tr, td, ts in zip(
                batch["shard"],
                batch["idx"],
                batch["n"],
                batch["row"],
                batch["_t_read"],
                batch["_t_decode"],
                batch["_t_score"],
                strict=True,
            ):
                s, j, n = int(s), int(j), int(n)
                got = pending.setdefault(s, {})
                if j >= 0 and j not in got:  # a retried batch may deliver a row twice: keep it once
                    got[j] = json.loads(row)
                    summary.add("read", tr)
                    summary.add("decode", td)
                    summary.add("score", ts)
                if len(got) == n:
                    rows = [got[k] for k in range(n)]
                    sink.write_shard(s, rows)
                    _count(summary, rows, on_rows)
                    del pending[s]
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(rows=summary.rows, errors=summary.errors)
    finally:
        if bar is not None:
            bar.close()
    if pending:
        raise RuntimeError(f"shards {sorted(pending)} did not complete; rerun the command to resume them")
    summary.wall_seconds = time.perf_counter() - t0
    return summary
