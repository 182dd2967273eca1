"""`icthp score`: score images (files, folders, prompts files, datasets) with any registered metrics, or read the
scores stored in PNG metadata; rows to .jsonl, .csv, .parquet or a folder of parquet shards, locally or on Ray."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import defaultdict

from icthp_cli.options import add_decode_policy_argument, add_model_arguments, model_options
from icthp_core.data.sources import DATASET_KINDS
from icthp_core.errors import ConfigError

#: error lines printed while a run goes (the count is always printed at the end)
MAX_ERROR_LINES = 100


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `icthp score`."""
    p = parser
    p.add_argument("images", nargs="*", help="image files and/or folders (folders: their image files)")
    p.add_argument("--prompt", help="the prompt for all images")
    p.add_argument("--prompts-file", help="CSV (columns image,prompt) or JSONL of {image, prompt} rows")
    p.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metrics or 'all' (see `icthp metrics`); default ict,hp,ict_hp "
        "(with --from-metadata: every stored metric)",
    )
    add_model_arguments(
        p,
        output_help="write rows to .jsonl, .csv or .parquet, or parquet shards to a folder; an existing output "
        "needs --resume or --overwrite",
    )
    p.add_argument(
        "--decode",
        default="auto",
        choices=["auto", "cpu", "gpu"],
        help="image decoding: cpu = PIL-exact; gpu = nvjpeg + torch resize on the device (within 1/255 mean of PIL); "
        "auto = gpu on CUDA (default)",
    )
    add_decode_policy_argument(p)
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the image towers (measured: no gain on an H200 or on a 2-core CPU; docs/benchmarks.md)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue --output, skipping rows (or folder shards) already written (same --metrics needed; a torn "
        "last row is cut)",
    )
    p.add_argument(
        "--retry-errors", action="store_true", help="with --resume: score again the rows that ended in an error"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true", help="no table or summary on stdout")
    p.add_argument(
        "--from-metadata",
        action="store_true",
        help="the scores stored in the images' PNG metadata (ComfyUI node ICTHPSaveWithScores); no model",
    )
    _add_engine_arguments(p)
    _add_dataset_arguments(p)


def _add_engine_arguments(parser: argparse.ArgumentParser) -> None:
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


def _add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("datasets (parquet, WebDataset, Hugging Face)")
    g.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="PATH_OR_ID",
        help="parquet file/folder, .tar shard(s)/folder, datasets save_to_disk folder, or hub id (hf:<id>); repeatable",
    )
    g.add_argument("--dataset-format", default="auto", choices=DATASET_KINDS, help="override format detection")
    g.add_argument(
        "--image-column",
        help="image column(s), comma-separated (bytes, {bytes,path} or paths); default: image/jpg/... or jpg_0,jpg_1",
    )
    g.add_argument("--prompt-column", help="prompt column (default: prompt/caption/text if present)")
    g.add_argument(
        "--keep-columns", default="", help="comma-separated input columns copied to the output rows (as text)"
    )
    g.add_argument("--split", default="train", help="split of a hub dataset (train)")
    g.add_argument("--shard-size", type=int, default=256, help="records per shard for file lists / datasets (256)")


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser of `icthp score` (tests and docs)."""
    parser = argparse.ArgumentParser(prog="icthp score", description=__doc__)
    add_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace):
    """The core's `ScoreConfig` of the parsed options."""
    from icthp_core.scale.plan import ScoreConfig

    try:
        opts = model_options(args)
    except ConfigError:
        raise
    except ValueError as e:  # the shared options' checks (--batch-size, --workers, --source)
        raise ConfigError(str(e)) from None
    return ScoreConfig(
        images=list(args.images),
        prompt=args.prompt,
        prompts_file=args.prompts_file,
        datasets=list(args.dataset),
        dataset_format=args.dataset_format,
        image_column=args.image_column,
        prompt_column=args.prompt_column,
        keep_columns=[c.strip() for c in args.keep_columns.split(",") if c.strip()],
        split=args.split,
        shard_size=args.shard_size,
        metrics=args.metrics,
        from_metadata=args.from_metadata,
        output=args.output,
        resume=args.resume,
        retry_errors=args.retry_errors,
        overwrite=args.overwrite,
        engine=args.engine,
        address=args.address,
        actors=args.actors,
        gpus_per_actor=args.gpus_per_actor,
        sources=opts.sources,
        device=opts.device,
        dtype=opts.dtype,
        batch_size=opts.batch_size,
        workers=opts.workers,
        decode=args.decode,
        decode_policy=args.decode_policy,
        compile=args.compile,
        progress=not args.no_progress,
    )


def rank_table(rows: list[dict], metrics: list[str]) -> str:
    """The rows as a text table, ranked within each prompt by ICT-HP (else the first metric)."""
    from icthp_core.data.images import display_name
    from icthp_core.scoring.registry import metric_label
    from icthp_core.scoring.selection import competition_ranks

    key = "ict_hp" if "ict_hp" in metrics else metrics[0]
    by_prompt: dict[str | None, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("error") is None:
            by_prompt[r.get("prompt")].append(r)
    ranks: dict[int, int | str] = {}
    for group in by_prompt.values():
        for r, rank in zip(group, competition_ranks([r[key] for r in group]), strict=True):
            ranks[id(r)] = rank if rank is not None else "-"
    heads = ["image"] + [metric_label(m) for m in metrics] + ["rank"]
    body = []
    for r in rows:
        name = display_name(str(r["image"]))
        if r.get("error") is None:
            body.append([name] + [f"{r[m]:.4f}" for m in metrics] + [str(ranks[id(r)])])
        else:
            body.append([name] + ["-"] * len(metrics) + ["error"])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def _show(result, from_metadata: bool) -> None:
    if from_metadata:
        from icthp_cli.score_metadata import metadata_lines

        lines = metadata_lines(result.rows, result.metrics)
    elif result.rows and result.all_rows_kept and not result.has_datasets:
        lines = [rank_table(result.rows, result.metrics)]
        for line in result.summary.lines():  # the table is the output; the counts are information
            print(line, file=sys.stderr)
    else:
        lines = result.summary.lines()
    for line in lines:
        print(line)


def run(args: argparse.Namespace) -> int:
    """Run `icthp score`: 0 when a row was scored (or nothing was left to do), 1 when every row is an error."""
    from icthp_core.scale.score import score

    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as \xNN, never crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    warnings.simplefilter("default")
    config = config_from_args(args)
    shown = [0]

    def on_rows(rows: list[dict]) -> None:
        for r in rows:
            if r.get("error") is not None and shown[0] < MAX_ERROR_LINES:
                shown[0] += 1
                print(f"error: {r['error']}", file=sys.stderr)

    result = score(config, log=lambda line: print(line, file=sys.stderr), on_rows=on_rows)
    if not args.quiet:
        _show(result, args.from_metadata)
    summary = result.summary
    if summary.errors:
        what = "have no readable scores" if args.from_metadata else "could not be scored"
        print(f"{summary.errors} of {summary.rows} images {what} (see errors above)", file=sys.stderr)
    return 1 if (summary.rows and summary.errors == summary.rows) else 0
