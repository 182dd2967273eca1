"""`icthp score`: score image files (folders, lists, prompts files) with any registered metrics."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import defaultdict
from pathlib import Path

from icthp_core.data.images import display_name
from icthp_core.data.outputs import (
    ScoreWriter,
    check_writable,
    output_kind,
    prepare_resume,
    read_prompt_rows,
    row_key,
    stored_image,
    unique_items,
)
from icthp_core.options import add_model_arguments, model_options
from icthp_core.scale.score_cmd import add_scale_arguments, run_scaled, wants_scale
from icthp_core.scoring.registry import metric_label, parse_metrics
from icthp_core.scoring.selection import competition_ranks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icthp score", description=__doc__)
    p.add_argument("images", nargs="*", help="image files and/or folders (folders: their image files)")
    p.add_argument("--prompt", help="the prompt for all images")
    p.add_argument("--prompts-file", help="CSV (columns image,prompt) or JSONL of {image, prompt} rows")
    p.add_argument(
        "--metrics",
        default="ict,hp,ict_hp",
        help="comma-separated metrics or 'all' (see `icthp metrics`); default ict,hp,ict_hp",
    )
    add_model_arguments(
        p, output_help="write rows to .jsonl, .csv or .parquet, or parquet shards to a folder (resumable per shard)"
    )
    p.add_argument(
        "--decode",
        default="auto",
        choices=["auto", "cpu", "gpu"],
        help="image decoding: cpu = PIL-exact; gpu = nvjpeg + torch resize on the device (within 1/255 mean of PIL); "
        "auto = gpu on CUDA (default)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the image towers (measured: no gain on an H200 or on a 2-core CPU; docs/benchmarks.md)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="append to --output, skipping rows already written (same --metrics needed; a torn last row is cut)",
    )
    p.add_argument(
        "--retry-errors", action="store_true", help="with --resume: score again the rows that ended in an error"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true", help="no table on stdout")
    p.add_argument(
        "--from-metadata",
        action="store_true",
        help="print the scores stored in the images' PNG metadata (ComfyUI node ICTHPSaveWithScores); no model",
    )
    add_scale_arguments(p)
    return p


def _items(args) -> tuple[list[tuple[str, str | None]], list[dict]]:
    """Items to score and error rows (bad lines of the prompts file)."""
    from icthp_core.data.images import expand_paths

    items: list[tuple[str, str | None]] = []
    bad: list[dict] = []
    if args.prompts_file:
        pairs, bad = read_prompt_rows(args.prompts_file)
        items += pairs
    if args.images:
        items += [(p, args.prompt) for p in expand_paths(args.images)]
    return items, bad


def _rank_table(rows: list[dict], metrics: list[str]) -> str:
    key = "ict_hp" if "ict_hp" in metrics else metrics[0]
    by_prompt: dict[str | None, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("error") is None:
            by_prompt[r.get("prompt")].append(r)
    for group in by_prompt.values():
        for r, rank in zip(group, competition_ranks([r[key] for r in group]), strict=True):
            r["rank"] = rank if rank is not None else "-"
    heads = ["image"] + [metric_label(m) for m in metrics] + ["rank"]
    body = []
    for r in rows:
        name = display_name(str(r["image"]))
        if r.get("error") is None:
            body.append([name] + [f"{r[m]:.4f}" for m in metrics] + [str(r["rank"])])
        else:
            body.append([name] + ["-"] * len(metrics) + ["error"])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def cmd_score(args) -> int:
    import torch

    from icthp_core.checkpoints.loading import parse_device
    from icthp_core.scoring.scorer import MultiScorer

    if wants_scale(args):  # --engine ray, --dataset, parquet or folder output: the sharded engine
        items, bad_rows = _items(args)
        for row in bad_rows:  # bad lines of a prompts file: reported here, the sharded outputs hold scored items
            print(f"error: {row['error']}", file=sys.stderr)
        return run_scaled(args, items)
    metrics = parse_metrics(args.metrics)
    opts = model_options(args)
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("--prompt is empty")
    if args.retry_errors and not args.resume:
        raise ValueError("--retry-errors needs --resume")
    out = None
    if args.output:
        out = Path(args.output)
        output_kind(out)
        if out.exists() and out.stat().st_size and not (args.resume or args.overwrite):
            raise ValueError(f"{out} exists; pass --resume to continue it or --overwrite")
        check_writable(out)  # before any model loads: an unwritable output must not cost the run
    items, bad_rows = _items(args)
    items, n_dup = unique_items(items)
    if n_dup:
        print(f"note: {n_dup} repeated (image, prompt) items scored once", file=sys.stderr)
    if not items and not bad_rows:
        raise ValueError("no images given (pass files/folders, or --prompts-file)")
    if args.resume and out is not None:
        done = prepare_resume(out, metrics, retry_errors=args.retry_errors)
        before = len(items) + len(bad_rows)
        items = [it for it in items if row_key(stored_image(it[0], out), it[1]) not in done]
        bad_rows = [r for r in bad_rows if row_key(r["image"], r["prompt"]) not in done]
        todo = len(items) + len(bad_rows)
        print(f"resume: {before - todo} rows already in {out}, {todo} to score", file=sys.stderr)
    device = parse_device(opts.device)
    scorer = MultiScorer(metrics, opts.sources, device=device, dtype=opts.dtype)
    from icthp_core.scoring.gpu_preprocess import resolve_decode

    decode = resolve_decode(args.decode, device)
    workers = opts.decode_workers(device, decode)
    if args.compile:
        scorer.compile()
    note = ""
    if device.type == "cpu" and opts.dtype in ("bf16", "fp16"):
        from icthp_core.scoring.cpu import native_bf16

        if not native_bf16():
            note = " (this CPU has no AVX512-BF16/AMX: half precision is emulated and slower than fp32)"
    if device.type == "cpu" and args.compile:
        note += " (torch.compile on the CPU was measured slower than eager in a whole job: docs/benchmarks.md)"
    print(
        f"scoring on {device} in {opts.dtype}, decode={decode}, workers={workers}, compile={args.compile}{note}",
        file=sys.stderr,
    )
    if scorer.needs_prompt and any(p is None for _, p in items):
        raise ValueError(f"metrics {metrics} need a prompt: pass --prompt or --prompts-file")
    writer = ScoreWriter(out, metrics, append=args.resume) if out is not None else None
    rows: list[dict] = []
    n_ok = n_err = 0
    for row in bad_rows:
        print(f"error: {row['error']}", file=sys.stderr)
    n_err += len(bad_rows)
    rows += bad_rows
    if writer is not None and bad_rows:
        writer.write(bad_rows)
    try:
        batch: list[dict] = []
        for row in scorer.score_files(
            items, batch_size=opts.batch_size, num_workers=workers, progress=not args.no_progress, decode=decode
        ):
            if row["error"] is not None:
                n_err += 1
                print(f"error: {row['error']}", file=sys.stderr)
            else:
                n_ok += 1
            rows.append(row)
            batch.append(row)
            if writer is not None and len(batch) >= opts.batch_size:
                writer.write(batch)
                batch = []
        if writer is not None and batch:
            writer.write(batch)
    finally:
        if writer is not None:
            writer.close()
        if torch.cuda.is_available() and device.type == "cuda":
            torch.cuda.synchronize()
    if not args.quiet and rows:
        print(_rank_table(rows, metrics))
    if n_err:
        print(f"{n_err} of {n_ok + n_err} images could not be scored (see errors above)", file=sys.stderr)
    return 1 if (n_ok == 0 and n_err > 0) else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # file names that are not UTF-8 print as \xNN, never crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    warnings.simplefilter("default")
    if args.from_metadata:
        from icthp_cli.score_metadata import cmd_from_metadata

        return cmd_from_metadata(args)
    return cmd_score(args)
