"""`icthp` command line: `score` images, list `metrics`, the Gradio `app`, preference `eval`."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections import defaultdict

from .outputs import ScoreWriter, done_keys, read_pairs, repair_tail

LABELS = {"ict": "ICT", "hp": "HP", "ict_hp": "ICT-HP", "clip": "CLIP", "pickscore": "PickScore",
          "hpsv2": "HPSv2", "hpsv2.1": "HPSv2.1", "aesthetic": "Aesthetic"}


def _add_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", help="image files and/or folders (folders: their image files)")
    p.add_argument("--prompt", help="the prompt for all images")
    p.add_argument("--prompts-file", help="CSV (columns image,prompt) or JSONL of {image, prompt} rows")
    p.add_argument("--ict", default="8y/ICT", help="ICT weights: hub id or local dir (default: 8y/ICT)")
    p.add_argument("--hp", default="8y/HP", help="HP weights: hub id or local dir (default: 8y/HP)")
    p.add_argument("--metrics", default="ict,hp,ict_hp",
                   help="comma-separated metrics (see `icthp metrics`); default ict,hp,ict_hp")
    p.add_argument("--source", action="append", default=[], metavar="METRIC=SRC",
                   help="weights of a baseline metric, e.g. pickscore=/models/PickScore_v1 (repeatable)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="auto = bf16 on GPU, fp32 on CPU")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="background image-decoding processes (0 = none)")
    p.add_argument("--output", "-o", help="write rows to .jsonl or .csv, incrementally")
    p.add_argument("--resume", action="store_true", help="append to --output, skipping rows already written")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--quiet", "-q", action="store_true", help="no table on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icthp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_score_args(sub.add_parser("score", help="score images with ICT, HP, ICT-HP and baselines"))
    sub.add_parser("metrics", help="list the registered metrics")
    sub.add_parser("app", help="launch the Gradio comparison app (options: icthp app --help)", add_help=False)
    sub.add_parser("eval", help="preference-accuracy evaluation (options: icthp eval --help)", add_help=False)
    return parser


def _items(args) -> list[tuple[str, str | None]]:
    from .images import expand_paths

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
    heads = ["image"] + [LABELS.get(m, m) for m in metrics] + ["rank"]
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

    from .loading import parse_device
    from .registry import list_metrics
    from .scorer import MultiScorer

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in list_metrics()]
    if unknown:
        raise SystemExit(f"icthp score: --metrics: unknown {unknown}; choose from {list_metrics()}")
    if args.batch_size < 1:
        raise SystemExit("icthp score: --batch-size must be >= 1")
    if args.prompt is not None and not args.prompt.strip():
        raise SystemExit("icthp score: --prompt is empty")
    items = _items(args)
    if not items:
        raise SystemExit("icthp score: no images given (pass files/folders, or --prompts-file)")
    sources = {"ict": args.ict, "hp": args.hp}
    for s in args.source:
        name, sep, src = s.partition("=")
        if not sep or not src:
            raise SystemExit(f"icthp score: --source {s!r}: expected METRIC=SRC")
        sources[name] = src
    device = parse_device(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    scorer = MultiScorer(metrics, sources, device=device, dtype=dtype)
    if scorer.needs_prompt and any(p is None for _, p in items):
        raise SystemExit(f"icthp score: metrics {metrics} need a prompt: pass --prompt or --prompts-file")
    writer = None
    if args.output:
        from pathlib import Path

        out = Path(args.output)
        if out.exists() and out.stat().st_size and not (args.resume or args.overwrite):
            raise SystemExit(f"icthp score: {out} exists; pass --resume to continue it or --overwrite")
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
        for row in scorer.score_files(items, batch_size=args.batch_size, num_workers=args.workers,
                                      progress=not args.no_progress):
            if row["error"] is not None:
                n_err += 1
                print(f"error: {row['error']}", file=sys.stderr)
            else:
                n_ok += 1
            rows.append(row)
            batch.append(row)
            if writer is not None and len(batch) >= args.batch_size:
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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "app":
        from gradio_app import main as app_main

        return app_main(argv[1:]) or 0
    if argv and argv[0] == "eval":
        from train.eval_preference import main as eval_main

        return eval_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    if args.command == "metrics":
        from .registry import METRICS, list_metrics

        for m in list_metrics():
            spec = METRICS.get(m)
            print(f"{m:10s} {spec.description if spec else 'ICT x HP (0..1)'}"
                  + (f"  [default: {spec.default_source}]" if spec else ""))
        return 0
    warnings.simplefilter("default")
    try:
        return cmd_score(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"icthp score: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
