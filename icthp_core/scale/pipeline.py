"""The executors of the score pipeline (`scale.score`): shards -> read -> decode + preprocess -> score -> sink.

`run_local` runs the stages in this process (image files through `MultiScorer.score_files`, dataset shards decoded
in a process pool); `run_ray` runs them as a Ray Data pipeline: read and decode as CPU tasks, scoring on an actor
pool (one actor per GPU, or N CPU actors), rows gathered on the driver. Both call the same read/decode/score
functions and write through the same `data.sinks.Sink`: a file gets every batch, a folder a whole shard.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from icthp_core.data.rows import finish_row, json_default, row_key
from icthp_core.data.sources import decode_records, iter_record_batches, read_shard

STAGES = ("read", "decode", "score")


@dataclass
class Summary:
    """What a run did: rows and errors written, shards written and skipped (resume), seconds spent per stage
    (summed over workers) and wall time."""

    rows: int = 0
    errors: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    wall_seconds: float = 0.0

    def add(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] += float(seconds)

    def merge(self, other: Summary) -> None:
        """Add the counts and stage times of `other` (wall time is the caller's)."""
        self.rows += other.rows
        self.errors += other.errors
        self.shards_done += other.shards_done
        for stage, t in other.stage_seconds.items():
            self.add(stage, t)

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
        keep = [c for c in row if c not in ("image", "prompt", "error", *scorer.metrics)]
        rows.append(finish_row(row, scorer.metrics, keep))  # a non-finite score becomes an error row
    return rows


# ------------------------------------------------------------------------------------------------ local engine
def _decode_chunk(args):
    records, modes, policy = args
    t = time.perf_counter()
    errors, pixels = decode_records(records, modes, policy)
    return errors, pixels, time.perf_counter() - t


@dataclass
class LocalRun:
    """The local executor's settings: the loaded scorer and how to batch and decode."""

    scorer: object
    batch_size: int = 32
    workers: int = 0
    decode: str = "cpu"
    progress: bool = True
    decode_policy: str = "view"


def _not_done(done: set) -> Callable[[dict], bool]:
    return lambda rec: row_key(rec["image"], rec.get("prompt")) not in done


def write_row_shards(shards, todo, sink, done: set, summary: Summary, on_rows=None) -> None:
    """Shards of kind `rows` (error rows, stored metadata): final already, written without a model."""
    keep = _not_done(done)
    for i in todo:
        if shards[i]["kind"] == "rows":
            rows = [r for r in shards[i]["rows"] if keep(r)]
            sink.write(i, rows, True)
            _count(summary, rows, on_rows, complete=True)


def _file_groups(shards, todo) -> list[list[int]]:
    """Runs of consecutive `files` shards (scored by one streaming call, one decoding pool)."""
    groups: list[list[int]] = []
    for i in todo:
        if shards[i]["kind"] == "files":
            if groups and groups[-1][-1] == i - 1:
                groups[-1].append(i)
            else:
                groups.append([i])
    return groups


def _run_files(group, shards, run: LocalRun, sink, done, summary, on_rows) -> None:
    """Score the items of `group` (files shards) with `scorer.score_files`; rows written every batch."""
    keep = _not_done(done)
    owners, items, left = [], [], {}
    for i in group:
        its = [tuple(it) for it in shards[i]["items"] if keep({"image": it[0], "prompt": it[1]})]
        left[i] = len(its)
        owners += [i] * len(its)
        items += its
    for i in group:
        if not left[i]:
            sink.write(i, [], True)
            _count(summary, [], on_rows, complete=True)
    buf: dict[int, list[dict]] = {}
    t = time.perf_counter()
    rows = run.scorer.score_files(items, run.batch_size, run.workers, run.progress, len(items), run.decode)
    for k, row in enumerate(rows):
        s = owners[k]
        buf.setdefault(s, []).append(row)
        left[s] -= 1
        if len(buf[s]) >= run.batch_size or not left[s]:
            batch = buf.pop(s)
            sink.write(s, batch, not left[s])
            _count(summary, batch, on_rows, complete=not left[s])
    summary.add("score", time.perf_counter() - t)


def _shard_chunks(shard: dict, batch_size: int, done: set, summary: Summary) -> Iterator[list[dict]]:
    """The records of `shard` not in `done`, streamed in lists of at most `batch_size` (read time counted)."""
    keep, batches = _not_done(done), iter_record_batches(shard, batch_size)
    while True:
        t = time.perf_counter()
        batch = next(batches, None)
        summary.add("read", time.perf_counter() - t)
        if batch is None:
            return
        batch = [r for r in batch if keep(r)]
        if batch:
            yield batch


def _decoded(chunks: Iterable[list[dict]], modes, policy: str, pool, ahead: int) -> Iterator[tuple[list[dict], tuple]]:
    """(chunk, (errors, pixels, seconds)) in order; with `pool`, at most `ahead` chunks decode ahead (bounded
    memory: `Pool.imap` would read the whole shard into its task queue)."""
    if pool is None:
        yield from ((c, _decode_chunk((c, modes, policy))) for c in chunks)
        return
    pending: deque = deque()
    for chunk in chunks:
        pending.append((chunk, pool.apply_async(_decode_chunk, ((chunk, modes, policy),))))
        if len(pending) > ahead:
            done_chunk, result = pending.popleft()
            yield done_chunk, result.get()
    while pending:
        done_chunk, result = pending.popleft()
        yield done_chunk, result.get()


def _with_last(items: Iterable) -> Iterator[tuple[object, bool]]:
    """(item, is_last) for each item of `items`, looking one item ahead."""
    it = iter(items)
    prev = next(it, _END)
    while prev is not _END:
        nxt = next(it, _END)
        yield prev, nxt is _END
        prev = nxt


_END = object()


def _run_dataset_shard(i, shard, run: LocalRun, pool, sink, done, summary, on_rows) -> None:
    """Read (streamed, a batch at a time), decode (in `pool`) and score one dataset shard; rows written every
    batch, the shard marked complete with its last batch."""
    modes = run.scorer.preprocess_modes
    chunks = _shard_chunks(shard, run.batch_size, done, summary)
    decoded = _decoded(chunks, modes, run.decode_policy, pool, ahead=2 * max(run.workers, 1))
    wrote = False
    for (chunk, (errors, pixels, dt)), last in _with_last(decoded):
        summary.add("decode", dt)
        t = time.perf_counter()
        rows = score_decoded(run.scorer, chunk, errors, pixels)
        summary.add("score", time.perf_counter() - t)
        sink.write(i, rows, last)
        _count(summary, rows, on_rows, complete=last)
        wrote = True
    if not wrote:
        sink.write(i, [], True)
        _count(summary, [], on_rows, complete=True)


def run_local(shards, todo, run: LocalRun, sink, done: set | None = None, on_rows=None) -> Summary:
    """Score the shards `todo` (not `rows` shards) in this process; rows whose key is in `done` are skipped.

    Files shards go through `scorer.score_files` (background decoding, `decode` cpu or gpu); dataset shards are
    read, decoded in a process pool and scored; rows reach `sink.write` every batch.
    """
    summary, t0, done = Summary(), time.perf_counter(), done or set()
    for group in _file_groups(shards, todo):
        _run_files(group, shards, run, sink, done, summary, on_rows)
    rest = [i for i in todo if shards[i]["kind"] not in ("files", "rows")]
    pool = None
    if rest and run.workers > 0:
        import multiprocessing as mp

        pool = mp.get_context("fork" if sys.platform == "linux" else "spawn").Pool(run.workers)
    bar = _bar(len(rest), run.progress and bool(rest))
    try:
        for i in rest:
            _run_dataset_shard(i, shards[i], run, pool, sink, done, summary, on_rows)
            _tick(bar, summary)
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _count(summary: Summary, rows: list[dict], on_rows, complete: bool = True) -> None:
    summary.rows += len(rows)
    summary.errors += sum(r.get("error") is not None for r in rows)
    summary.shards_done += int(complete)
    if on_rows is not None and rows:
        on_rows(rows)


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="shard", desc="scoring")


def _tick(bar, summary) -> None:
    """One shard done: advance the bar (if any) and show the running row and error counts."""
    if bar is not None:
        bar.update(1)
        bar.set_postfix(rows=summary.rows, errors=summary.errors)


# ------------------------------------------------------------------------------------------------ ray engine
#: with this set to 0 before `import ray`, a local Ray binds its services to 127.0.0.1 (single node only)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join `address` (a running cluster, e.g. 'auto', 'ray://head:10001' or '127.0.0.1:PORT'), else start a local
    Ray on loopback (127.0.0.1) without the dashboard. A no-op when Ray is already initialised in this process.
    Joining a cluster with token authentication (Ray's default) needs `RAY_AUTH_MODE=token` and its token."""
    loopback = not address or address.removeprefix("ray://").startswith(("127.", "localhost"))
    if loopback and "ray" not in sys.modules:  # a local Ray, or one on this machine's loopback: stay on 127.0.0.1
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


def _read_rows(item: dict, done: frozenset = frozenset()) -> list[dict]:
    """Ray flat_map: one shard -> its records not in `done` (+ shard id, index, count, read time); a marker row
    if none."""
    t = time.perf_counter()
    records = [r for r in read_shard(json.loads(item["spec"])) if row_key(r["image"], r.get("prompt")) not in done]
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
                "rec": json.dumps(meta, default=json_default).encode(),
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


def _decode_batch(batch: dict, modes: Sequence[str], policy: str = "view") -> dict:
    """Ray map_batches (CPU tasks): records -> pixels per preprocessing mode + error (decode policy `policy`)."""
    t = time.perf_counter()
    errors, pixels = decode_records(_records(batch), modes, policy)
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
            "row": np.array([json.dumps(r, default=json_default) for r in rows], dtype=object),
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
    todo: Sequence[int] | None = None,
    done: set | None = None,
    decode_policy: str = "view",
) -> Summary:
    """The Ray Data pipeline over the shards `todo` (default: those not in `sink.done_shards()`), skipping records
    whose key is in `done` (see the module docstring). `sink` is an `icthp_core.data.sinks.Sink`."""
    init_ray(address)

    summary, t0 = Summary(), time.perf_counter()
    if todo is None:
        finished = sink.done_shards()
        todo = [i for i in range(len(shards)) if i not in finished]
        summary.shards_skipped = len(shards) - len(todo)
    if not todo:
        summary.wall_seconds = time.perf_counter() - t0
        return summary
    ds = _ray_dataset(
        shards, todo, metrics, sources, device, dtype, batch_size, actors, gpus_per_actor, done, decode_policy
    )
    _gather(ds, sink, summary, _bar(len(todo), progress), on_rows)
    summary.wall_seconds = time.perf_counter() - t0
    return summary


def _ray_dataset(shards, todo, metrics, sources, device, dtype, batch_size, actors, gpus_per_actor, done, policy):
    """The read -> decode -> score Ray Data pipeline over shards `todo`."""
    import ray

    from icthp_core.scoring.registry import METRICS, required_base_metrics

    cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if cluster_gpus and (device is None or str(device).startswith("cuda")) else 0.0
    if actors is None:
        actors = max(int(cluster_gpus / gpus_per_actor), 1) if gpus_per_actor else 2
    actor_device = device or ("cuda" if gpus_per_actor else "cpu")
    modes = sorted({METRICS[m].preprocess for m in required_base_metrics(list(metrics))})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    items = [{"shard": i, "spec": json.dumps(shards[i])} for i in todo]
    # logical CPUs: on a small machine, leave room for read/decode tasks beside the CPU scoring actors
    cpus = float(ray.cluster_resources().get("CPU", 1))
    task_cpus = 1.0 if cpus >= 8 else 0.5
    actor_cpus = 0.0 if gpus_per_actor else min(1.0, max(cpus - task_cpus, 0.1) / actors)
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.flat_map(_read_rows, fn_kwargs={"done": frozenset(done or ())}, num_cpus=task_cpus)
    decode_kwargs = {"modes": modes, "policy": policy}
    ds = ds.map_batches(_decode_batch, fn_kwargs=decode_kwargs, batch_size=batch_size, num_cpus=task_cpus)
    return ds.map_batches(
        _ScoreActor,
        fn_constructor_kwargs={"metrics": list(metrics), "sources": dict(sources), "device": actor_device}
        | {"dtype": dtype},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=actor_cpus,
        num_gpus=gpus_per_actor or None,
    )  # Ray Data restarts dead actors and retries their batches (max_restarts=-1, max_task_retries=-1)


def _gather(ds, sink, summary: Summary, bar, on_rows) -> None:
    """Rows of the pipeline to `sink`: each (shard, index) once; a streaming sink gets every batch at once, a
    folder sink a whole shard in order."""
    pending: dict[int, dict] = {}
    completed: set[int] = set()
    streaming = getattr(sink, "streaming", True)
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            fresh: dict[int, list[dict]] = {}
            for s, j, n, row, tr, td, ts in zip(
                batch["shard"], batch["idx"], batch["n"], batch["row"],
                batch["_t_read"], batch["_t_decode"], batch["_t_score"], strict=True,
            ):  # fmt: skip
                s, j = int(s), int(j)
                if s in completed:  # a late retry of a shard already written
                    continue
                got = pending.setdefault(s, {"n": int(n), "rows": {}})
                if j >= 0 and j not in got["rows"]:  # a retried batch may deliver a row twice: keep it once
                    got["rows"][j] = json.loads(row)
                    fresh.setdefault(s, []).append(got["rows"][j])
                    for stage, t in (("read", tr), ("decode", td), ("score", ts)):
                        summary.add(stage, t)
                fresh.setdefault(s, [])
            for s, rows in fresh.items():
                got = pending[s]
                complete = len(got["rows"]) == got["n"]
                out = rows if streaming else [got["rows"][k] for k in range(got["n"])] if complete else []
                if streaming or complete:
                    sink.write(s, out, complete)
                    _count(summary, out, on_rows, complete)
                if complete:
                    del pending[s]
                    completed.add(s)
                    _tick(bar, summary)
    finally:
        if bar is not None:
            bar.close()
    if pending:
        raise RuntimeError(f"shards {sorted(pending)} did not complete; rerun the command to resume them")
