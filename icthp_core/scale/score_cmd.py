"""`icthp score` over datasets and/or with `--engine ray`: plan shards, pick the output sink, run an engine, report.

`icthp_cli/score.py` hands over here when `--engine ray`, `--dataset` or a `.parquet`/folder output is given; the
plain file path (folders, lists, .jsonl/.csv) stays in `icthp_cli/score.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from icthp_core.data.parquet_out import ParquetScoreFile, ShardDir, is_shard_dir, parquet_done_keys
from icthp_core.data.sources import add_source_arguments, plan_dataset, plan_files, plan_fingerprint


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """`--engine`, Ray options and the dataset options of `icthp score`."""
    g = parser.add_argument_group("engine")
    g.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="local: this process (default); ray: a Ray Data pipeline (pip install icthp[scale])",
    )
    g.add_argument("--address", help="Ray cluster to join (e.g. auto, ray://head:10001); default: start a local Ray")
    g.add_argument("--actors", type=int, help="scoring actors (default: one per GPU, else 2 CPU actors)")
    g.add_argument("--gpus-per-actor", type=float, help="GPUs per scoring actor (default 1 when GPUs exist)")
    add_source_arguments(parser)


def wants_scale(args: argparse.Namespace) -> bool:
    """Whether this `icthp score` run goes through the sharded engine."""
    out = getattr(args, "output", None)
    return (
        getattr(args, "engine", "local") == "ray"
        or bool(getattr(args, "dataset", None))
        or bool(out and (out.lower().endswith(".parquet") or is_shard_dir(out)))
    )


def plan(args, items: list[tuple[str, str | None]]) -> list[dict]:
    """Shards of the file items followed by those of every --dataset."""
    if args.shard_size < 1:
        raise ValueError(f"--shard-size {args.shard_size}: must be >= 1")
    keep = [c.strip() for c in args.keep_columns.split(",") if c.strip()]
    shards = plan_files(items, args.shard_size)
    for source in args.dataset:
        shards += plan_dataset(
            source,
            args.dataset_format,
            args.image_column,
            args.prompt_column,
            keep,
            args.split,
            args.shard_size,
            prompt=args.prompt,
        )
    return shards


class _FileSink:
    """One output file (.jsonl/.csv via the shared ScoreWriter, or .parquet), row-level resume; or no file."""

    def __init__(self, writer):
        self.writer = writer

    def done(self) -> set[int]:
        return set()

    def write_shard(self, i: int, rows: list[dict]) -> None:
        if self.writer is not None:
            self.writer.write(rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def open_sink(args, shards, metrics, keep):
    """(sink, skip) for --output: a shard folder, a parquet file or a .jsonl/.csv file; skip drops done rows."""
    out = args.output
    if out and is_shard_dir(out):
        if args.resume and not Path(out).exists():
            print(f"resume: {out} does not exist yet; starting fresh", file=sys.stderr)
        return ShardDir(out, plan_fingerprint(shards, metrics), len(shards), metrics, keep, args.overwrite), None
    if args.engine == "ray":
        raise ValueError(f"--output {out or '(none)'}: --engine ray writes a folder of parquet shards; give a folder")
    if not out:
        return _FileSink(None), None
    path = Path(out)
    if path.exists() and path.stat().st_size and not (args.resume or args.overwrite):
        raise ValueError(f"{path} exists; pass --resume to continue it or --overwrite")
    done: set[tuple[str, str]] = set()
    if path.suffix.lower() == ".parquet":
        if args.resume:
            done = parquet_done_keys(path)
        writer = ParquetScoreFile(path, metrics, keep, append=args.resume)
    else:
        from icthp_core.data.outputs import ScoreWriter, done_keys, repair_tail

        if args.resume:
            repair_tail(path)
            done = done_keys(path)
        writer = ScoreWriter(path, metrics, append=args.resume)
    if args.resume:
        print(f"resume: {len(done)} rows already in {path}", file=sys.stderr)
    return _FileSink(writer), (lambda r: (str(r["image"]), str(r.get("prompt") or "")) in done) if done else None


def run_scaled(args, items: list[tuple[str, str | None]]) -> int:
    """Run `icthp score` for `args` (parsed by icthp_cli.score) through the sharded engine."""
    from icthp_core.options import model_options
    from icthp_core.scale.pipeline import run_local, run_ray
    from icthp_core.scoring.registry import parse_metrics

    metrics = parse_metrics(args.metrics)
    opts = model_options(args)
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("--prompt is empty")
    shards = plan(args, items)
    if not shards:
        raise ValueError("no images given (pass files/folders, --prompts-file or --dataset)")
    keep = [c.strip() for c in args.keep_columns.split(",") if c.strip()]
    sink, skip = open_sink(args, shards, metrics, keep)
    errors_shown = [0]

    def on_rows(rows):
        for r in rows:
            if r["error"] is not None and errors_shown[0] < 20:
                errors_shown[0] += 1
                print(f"error: {r['error']}", file=sys.stderr)

    progress = not args.no_progress
    try:
        if args.engine == "ray":
            if skip is not None:
                raise ValueError("--engine ray resumes shard folders only")
            summary = run_ray(
                shards,
                metrics,
                opts.sources,
                sink,
                device=opts.device,
                dtype=opts.dtype,
                batch_size=opts.batch_size,
                actors=args.actors,
                gpus_per_actor=args.gpus_per_actor,
                address=args.address,
                progress=progress,
                on_rows=on_rows,
            )
        else:
            from icthp_core.checkpoints.loading import parse_device
            from icthp_core.scoring.scorer import MultiScorer

            scorer = MultiScorer(metrics, opts.sources, device=parse_device(opts.device), dtype=opts.dtype)
            summary = run_local(shards, scorer, sink, opts.batch_size, opts.decode_workers(), skip, progress, on_rows)
    finally:
        if hasattr(sink, "close"):
            sink.close()
    if not args.quiet:
        for line in summary.lines():
            print(line)
    if summary.errors:
        print(f"{summary.errors} of {summary.rows} images could not be scored", file=sys.stderr)
    return 1 if (summary.rows and summary.errors == summary.rows) else 0
