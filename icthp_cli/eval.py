"""`icthp eval`: preference accuracy of ICT, HP, ICT-HP and the baselines (paper Table 1, Pick-a-Pic v2).

    icthp eval --data pick-high/test.jsonl --metrics all --protocol paper -o results/table1.json
    icthp eval --data pickapic_test.parquet --val-data pickapic_val.parquet --metrics pickscore

Triplets (Pick-High): the Table-1 rows (Average, I2>I1, I3>I2, I3>I1) under `--protocol paper` (ICT-HP = ICT x HP,
ties count 0 as Table 1; `--ties half` for 1/2) or `--protocol upstream` (the upstream trainer's ICT x softmax over
the triplet of raw HP logits, ties 0; with `--dtype bf16` in its bf16 arithmetic), with bootstrap intervals, a
Random row, an ICT-groundtruth row when the data has E/R labels, and the dropped triplets of each row named.
Pairs (Pick-a-Pic v2): PickScore's tie-aware accuracy. `--output X.json` also writes `X.md` (Markdown table).
See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

from icthp_cli.options import SCORE_METRICS, add_decode_policy_argument, add_model_arguments, model_options, user_path
from icthp_core.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    from icthp_core.evaluation.protocols import PROTOCOLS, TIES

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--data", required=True, help="triplets or pairs: .jsonl/.csv/.parquet (or Pick-High .pkl)")
    p.add_argument("--kind", choices=("auto", "triplets", "pairs"), default="auto", help="default: from the columns")
    p.add_argument("--val-data", help="pairs used to choose the tie threshold (tie-aware protocol)")
    p.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metrics or 'all' (`icthp metrics` lists them); "
        f"default {SCORE_METRICS} less those whose weights are 'none', plus any --source metric",
    )
    p.add_argument(
        "--protocol", choices=tuple(PROTOCOLS), default="paper", help="triplet accuracy protocol (default: paper)"
    )
    p.add_argument(
        "--ties",
        choices=tuple(TIES),
        default=None,
        help="credit of an equal pair: zero (Table 1 and upstream; the default of both protocols) or half",
    )
    p.add_argument("--image-root", help="folder for relative image paths (default: the data file's folder)")
    p.add_argument("--trust-pickle", action="store_true", help="allow Pick-High .pkl files (pickle runs code)")
    p.add_argument("--limit", type=int, help="evaluate only the first N usable rows")
    p.add_argument(
        "--tie-grid",
        default="auto",
        help="tie thresholds: 'pickscore' (0,0.1,...,1), 'relative' (quantiles of |p1-p0|), a comma list, or "
        "'auto' (pickscore grid for pickscore, relative for the others)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals (0 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and of the Random row")
    add_model_arguments(p, output_help="write the results as JSON here (and the Markdown table beside it, .md)")
    p.add_argument("--scores-out", help="write per-item scores (JSON lines) here")
    add_decode_policy_argument(p)


def _metrics(text: str | None, sources: dict[str, str]) -> list[str]:
    from icthp_core.scoring.registry import parse_metrics

    if text:
        return parse_metrics(text)
    metrics = [m for m in ("ict", "hp") if m in sources]
    if len(metrics) == 2:
        metrics.append("ict_hp")
    metrics += [m for m in sources if m not in metrics]
    if not metrics:
        raise ConfigError("no metric: give --ict and/or --hp, or --metrics")
    return metrics


def check_writable(path: str | os.PathLike | None, what: str) -> None:
    """Fail now (before any model loads) if `path` cannot be written: its folder is created if needed."""
    from icthp_core.data import outputs

    if path:
        outputs.check_writable(path, what)  # the one check shared by every command that writes


def markdown_path(output: str | os.PathLike) -> Path:
    p = Path(output)
    return p.with_suffix(".md") if p.suffix.lower() != ".md" else p.with_name(p.name + ".md")


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """The results of the parsed `args` (written to `--output`/`--scores-out` when given)."""
    from icthp_core.data.datasets import detect_kind, load_pairs, load_triplets
    from icthp_core.evaluation.preference import evaluate_pairs, evaluate_triplets, markdown_table, protocol_metrics

    opts = model_options(args)
    metrics = _metrics(args.metrics, opts.sources)
    metrics = protocol_metrics(metrics, args.protocol)  # upstream: ICT and the raw HP logits for its ICT-HP
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap {args.bootstrap}: must be >= 0")
    check_writable(opts.output, "--output")
    if opts.output:
        check_writable(markdown_path(opts.output), "--output (Markdown)")
    check_writable(args.scores_out, "--scores-out")
    kind = detect_kind(args.data, args.trust_pickle) if args.kind == "auto" else args.kind
    if kind == "triplets":
        records, report = load_triplets(args.data, args.image_root, args.trust_pickle, limit=args.limit)
        if report.skipped.get("nan_label"):  # labels are optional here: keep every row, drop the groundtruth row
            records, report = load_triplets(
                args.data, args.image_root, args.trust_pickle, limit=args.limit, use_labels=False
            )
    else:
        records, report = load_pairs(args.data, image_root=args.image_root, limit=args.limit)
    val_records = val_report = None
    if kind == "pairs" and args.val_data:
        val_records, val_report = load_pairs(args.val_data, image_root=args.image_root)
    from icthp_core.scoring.scorer import MultiScorer  # the data is read and checked before the models load

    scorer = MultiScorer(metrics, opts.sources, device=opts.device, dtype=opts.dtype, decode_policy=args.decode_policy)
    common = {"batch_size": opts.batch_size, "workers": opts.decode_workers(), "report": report}
    if kind == "triplets":
        # upstream in bf16: its validation's bf16 arithmetic (equal bf16 products count 0); paper: the dtype only
        precision = "bf16" if args.protocol == "upstream" and opts.dtype == "bf16" else "fp32"
        res = evaluate_triplets(
            scorer, records, args.protocol, n_boot=args.bootstrap, seed=args.seed, ties=args.ties,
            precision=precision, **common,
        )  # fmt: skip
    else:
        res = evaluate_pairs(scorer, records, val_records, args.tie_grid, val_report=val_report, **common)
    res = {
        "data": str(args.data),
        "metrics": metrics,
        "sources": opts.sources,
        "dtype": opts.dtype,
        "decode_policy": args.decode_policy,
        "report": report.to_dict(),
        **res,
    }
    if val_report is not None:
        res["val_report"] = val_report.to_dict()
    items = res.pop("items")
    if args.scores_out:
        with user_path("--scores-out", args.scores_out, write=True), open(args.scores_out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(it) + "\n" for it in items)
    if opts.output:
        with user_path("--output", opts.output, write=True):
            Path(opts.output).write_text(json.dumps(res, indent=2))
            markdown_path(opts.output).write_text(markdown_table(res))
    return res


def run(args: argparse.Namespace) -> int:
    """Prints the data report and the table; returns an exit code (errors are printed by `icthp`)."""
    from icthp_core.evaluation.preference import format_table

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    res = evaluate(args)
    rep = res["report"]
    print(
        f"{res['data']}: {res['kind']}, {rep['kept']}/{rep['total']} rows used"
        + (f", skipped {rep['skipped']}" if rep["skipped"] else "")
        + (f", {rep['decode_failures']} unreadable images" if rep["decode_failures"] else "")
    )
    print(format_table(res))
    if args.output:
        print(f"results written to {args.output} and {markdown_path(args.output)}")
    return 0
