"""`score(config)`: the one scoring pipeline behind `icthp score` (every source, sink and engine).

plan (`scale.plan`: inputs -> shards, duplicates dropped, settings checked) -> sink (`data.sinks`: output checked,
resume state and metric check, `retry_errors`; all before any model loads) -> rows shards written as they are ->
the other shards run by the local executor or the Ray executor (`scale.pipeline`) -> sink closed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from icthp_core.data.sinks import SinkOptions, open_sink
from icthp_core.scale.pipeline import LocalRun, Summary, run_local, run_ray, write_row_shards
from icthp_core.scale.plan import Plan, ScoreConfig, build_plan

#: rows kept in `ScoreResult.rows` (for a table); a larger run keeps only the counts
MAX_KEPT_ROWS = 10_000


@dataclass
class ScoreResult:
    """What `score` did: counts and timings (`summary`), the output columns, and the first rows (for a table)."""

    summary: Summary
    metrics: list[str]
    keep: list[str]
    rows: list[dict] = field(default_factory=list)
    all_rows_kept: bool = True
    duplicates: int = 0
    has_datasets: bool = False


def _load_local(config: ScoreConfig, metrics: list[str], log: Callable[[str], None]) -> LocalRun:
    """The models of this run, loaded once, and how the local executor batches and decodes."""
    from icthp_core.checkpoints.loading import parse_device
    from icthp_core.scoring.gpu_preprocess import default_workers, resolve_decode
    from icthp_core.scoring.scorer import MultiScorer

    device = parse_device(config.device)
    decode = resolve_decode(config.decode, device) if config.decode_policy == "view" else "cpu"  # gpu: view only
    workers = config.workers if config.workers is not None else default_workers(device, decode)
    scorer = MultiScorer(
        metrics, dict(config.sources), device=device, dtype=config.dtype, decode_policy=config.decode_policy
    )
    if config.compile:
        scorer.compile()
    note = ""
    if device.type == "cpu" and config.dtype in ("bf16", "fp16"):
        from icthp_core.scoring.cpu import native_bf16

        if not native_bf16():
            note = " (this CPU has no AVX512-BF16/AMX: half precision is emulated and slower than fp32)"
    if device.type == "cpu" and config.compile:
        note += " (torch.compile on the CPU was measured slower than eager in a whole job: docs/benchmarks.md)"
    log(
        f"scoring on {device} in {config.dtype}, decode={decode} ({config.decode_policy} policy), workers={workers}, "
        f"compile={config.compile}{note}"
    )
    return LocalRun(scorer, config.batch_size, workers, decode, config.progress, config.decode_policy)


def _execute(config: ScoreConfig, plan: Plan, todo: list[int], sink, done: set, on_rows, log) -> Summary:
    if config.engine == "ray":
        return run_ray(
            plan.shards,
            plan.metrics,
            dict(config.sources),
            sink,
            device=config.device,
            dtype=config.dtype,
            batch_size=config.batch_size,
            actors=config.actors,
            gpus_per_actor=config.gpus_per_actor,
            address=config.address,
            progress=config.progress,
            on_rows=on_rows,
            todo=todo,
            done=done,
            decode_policy=config.decode_policy,
        )
    return run_local(plan.shards, todo, _load_local(config, plan.metrics, log), sink, done, on_rows)


def score(
    config: ScoreConfig,
    log: Callable[[str], None] | None = None,
    on_rows: Callable[[list[dict]], None] | None = None,
) -> ScoreResult:
    """Run `config` (see `ScoreConfig`) and return what was done.

    Args:
        config: the run's settings.
        log: called with lines of information (resume counts, device, repeated items); default: dropped.
        on_rows: called with every batch of rows as they are written (e.g. to show errors as they happen).

    Raises an `ICTHPError` subclass (one line naming the option, file or line) before any model loads for bad
    settings, unreadable inputs or an output that cannot be written or resumed.
    """
    log = log or (lambda line: None)
    plan = build_plan(config)
    if plan.duplicates:
        log(f"note: {plan.duplicates} repeated (image, prompt) items scored once")
    options = SinkOptions(config.resume, config.retry_errors, config.overwrite)
    sink = open_sink(config.output, plan.metrics, plan.keep, options, plan.fingerprint, len(plan.shards), log)
    result = ScoreResult(Summary(), plan.metrics, plan.keep, duplicates=plan.duplicates, has_datasets=plan.has_datasets)

    def collect(rows: list[dict]) -> None:
        room = MAX_KEPT_ROWS - len(result.rows)
        result.rows += rows[: max(room, 0)]
        result.all_rows_kept = result.all_rows_kept and len(rows) <= room
        if on_rows is not None:
            on_rows(rows)

    t0 = time.perf_counter()
    try:
        finished, done = sink.done_shards(), sink.done_keys()
        todo = [i for i in range(len(plan.shards)) if i not in finished]
        result.summary.shards_skipped = len(plan.shards) - len(todo)
        write_row_shards(plan.shards, todo, sink, done, result.summary, collect)
        todo = [i for i in todo if plan.shards[i]["kind"] != "rows"]
        if todo:
            result.summary.merge(_execute(config, plan, todo, sink, done, collect, log))
    finally:
        sink.close()
    result.summary.wall_seconds = time.perf_counter() - t0
    return result
