"""`icthp score`: score image files (folders, lists, prompts files) with any registered metrics."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import defaultdict

from icthp_core.data.outputs import ScoreWriter, done_keys, read_pairs, repair_tail
from icthp_core.options import add_model_arguments, model_options
from icthp_core.scale.score_cmd import add_scale_arguments, run_scaled, wants_scale
from icthp_core.scoring.registry import metric_label, parse_metrics


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
    p.add_argument("--resume", action="store_true", help="append to --output, skipping rows already written")
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


def _items(args) -> list[tuple[str, str | None]]:
    from icthp_core.data.images import expand_paths

    items: list[tuple[str, str | None]] = []
    if args.prompts_file:
        items += read_pairs(args.prompts_file)
    if args.images:
        items += [(p, args.prompt) for p in expand_paths(args.images)]
    return items


def _rank_table(rows: list[dict], metrics: list[str]) -> str:
    key = "ict_hp" if "ict_hp" in metrics else metrics[0]
    by_prompt: dict[str | None, list[dict]] = defaultdict(list)
    for r in rows:
        if r.get("error") is None:
            by_prompt[r.get("prompt")].append(r)
    for group in by_prompt.values():
        for rank, r in enumerate(sorted(group, key=lambda r: -r[key]), 1):
            r["rank"] = rank
    heads = ["image"] + [metric_label(m) for m in metrics] + ["rank"]
    body = []
    for r in rows:
        if r.get("error") is None:
            body.append([r["image"]] + [f"{r[m]:.4f}" for m in metrics] + [str(r["rank"])])
        else:
            body.append([r["image"]] + ["-"] * len(metrics) + ["error"])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(heads)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(lines)


def cmd_score(args) -> int:
    import torch

    from icthp_core.checkpoints.loading import parse_device
    from icthp_core.scoring.scorer import MultiScorer

    if wants_scale(args):  # --engine ray, --dataset, parquet or folder output: the sharded engine
        return run_scaled(args, _items(args))
    metrics = parse_metrics(args.metrics)
    opts = model_options(args)
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("--prompt is empty")
    items = _items(args)
    if not items:
        raise ValueError("no images given (pass files/folders, or --prompts-file)")
    device = parse_device(opts.device)
    scorer = MultiScorer(metrics, opts.sources, device=device, dtype=opts.dtype)
    if scorer.needs_prompt and any(p is None for _, p in items):
        raise ValueError(f"metrics {metrics} need a prompt: pass --prompt or --prompts-file")
    writer = None
    if args.output:
        from pathlib import Path

        out = Path(args.output)
        if out.exists() and out.stat().st_size and not (args.resume or args.overwrite):
            raise ValueError(f"{out} exists; pass --resume to continue it or --overwrite")
        if args.resume:
            repair_tail(out)
            done = done_keys(out)
            before = len(items)
            items = [it for it in items if (it[0], it[1] or "") not in done]
            print(f"resume: {before - len(items)} rows already in {out}, {len(items)} to score", file=sys.stderr)
        writer = ScoreWriter(out, metrics, append=args.resume)
    rows: list[dict] = []
    n_ok = n_err = 0
    try:
        batch: list[dict] = []
        for row in scorer.score_files(
            items, batch_size=opts.batch_size, num_workers=opts.workers, progress=not args.no_progress
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
    warnings.simplefilter("default")
    if args.from_metadata:
        from icthp_cli.score_metadata import cmd_from_metadata

        return cmd_from_metadata(args)
    return cmd_score(args)
