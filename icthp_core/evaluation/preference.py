"""Preference accuracy of ICT, HP, ICT-HP and the baseline reward models.

    icthp eval --data test.jsonl --ict OUT/ICT --hp OUT/HP --metrics ict,hp,ict_hp,clip
    icthp eval --data pickapic_test.parquet --val-data pickapic_val.parquet --metrics pickscore

Triplet data (Pick-High style, see `icthp_core.data.datasets`): Table-1 protocol of the paper - every image of a triplet
is scored with its basic prompt P_easy, and the accuracies I2>I1, I3>I2, I3>I1 and their average are reported.
Pair data (Pick-a-Pic v2 style): PickScore's tie-aware accuracy, with the tie threshold chosen on `--val-data`
(else on the evaluated data itself, flagged as optimistic), plus the plain accuracy on non-tied pairs.
Prints a table and writes JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icthp_core.data.datasets import LoadReport, UnsafeDataError, detect_kind, load_pairs, load_triplets, open_image
from icthp_core.errors import ICTHPError
from icthp_core.evaluation.metrics import (
    DEFAULT_TIE_GRID,
    choose_tie_threshold,
    pairwise_accuracy,
    relative_tie_grid,
    tie_aware_accuracy,
    triplet_accuracy,
)
from icthp_core.scoring.preprocess import preprocess_pil
from icthp_core.scoring.registry import list_metrics

logger = logging.getLogger("icthp.eval")


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the evaluation options to `parser` (used by `icthp eval` and this module's `main`)."""
    parser.add_argument("--data", required=True, help="triplets or pairs: .jsonl/.csv/.parquet (or Pick-High .pkl)")
    parser.add_argument(
        "--kind", choices=("auto", "triplets", "pairs"), default="auto", help="data kind (default: from the columns)"
    )
    parser.add_argument("--val-data", help="pairs used to choose the tie threshold (tie-aware protocol)")
    parser.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metrics or 'all' "
        f"({', '.join(list_metrics())}); "
        "default: ict,hp,ict_hp for the models given",
    )
    parser.add_argument("--ict", help="ICT model: hub id or local dir (published layout)")
    parser.add_argument("--hp", help="HP model: hub id or local dir (published layout)")
    parser.add_argument(
        "--source",
        action="append",
        default=[],
        metavar="METRIC=PATH",
        help="weights for a metric (hub id or local path); repeatable",
    )
    parser.add_argument("--image-root", help="folder for relative image paths (default: the data file's folder)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow reading Pick-High .pkl files (pickle runs code: trusted files only)",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N usable rows")
    parser.add_argument(
        "--tie-grid",
        default="auto",
        help="tie thresholds to try: 'pickscore' (0,0.1,...,1), 'relative' (quantiles of |p1-p0| on "
        "the validation pairs), a comma list, or 'auto' (pickscore grid for pickscore, relative "
        "for the others)",
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--scores-out", help="write per-item scores (JSON lines) here")
    return parser


# ----------------------------------------------------------------------------------------------- scoring


class _Images(torch.utils.data.Dataset):
    def __init__(self, refs: list, modes: list[str]):
        self.refs, self.modes = refs, modes

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        try:
            img = open_image(self.refs[i])
            return i, {m: preprocess_pil(img, m) for m in self.modes}, None
        except Exception as e:  # noqa: BLE001 - any decoder error: the item is reported and left out
            return i, None, f"{type(e).__name__}: {e}"


def _collate(items):
    ok = [it for it in items if it[1] is not None]
    pixels = {m: torch.stack([it[1][m] for it in ok]) for m in (ok[0][1] if ok else {})}
    return [it[0] for it in ok], pixels, [(it[0], it[2]) for it in items if it[1] is None]


def score_images(
    scorer, refs: list, prompts: list[str], batch_size: int, num_workers: int, report: LoadReport | None = None
) -> dict[str, np.ndarray]:
    """Scores [N] per metric (NaN where the image could not be decoded, counted in `report`)."""
    n = len(refs)
    out = {m: np.full(n, np.nan) for m in scorer.metrics}
    loader = torch.utils.data.DataLoader(
        _Images(refs, scorer.preprocess_modes), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
    )
    for idx, pixels, errors in loader:
        for i, err in errors:
            logger.warning("image %d unreadable: %s", i, err)
            if report is not None:
                report.decode_failures += 1
        if not idx:
            continue
        scores = scorer.score_pixels(pixels, [prompts[i] for i in idx] if scorer.needs_prompt else None)
        for m, v in scores.items():
            out[m][idx] = v.numpy()
    return out


def _tie_grid(spec: str, metric: str, p0, p1) -> list[float]:
    if spec == "auto":
        spec = "pickscore" if metric == "pickscore" else "relative"
    if spec == "pickscore":
        return list(DEFAULT_TIE_GRID)
    if spec == "relative":
        return relative_tie_grid(p0, p1)
    try:
        return [float(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"--tie-grid {spec!r}: expected auto, pickscore, relative or a comma list") from None


def evaluate_triplets(scorer, args) -> dict[str, Any]:
    recs, report = load_triplets(
        args.data, image_root=args.image_root, trust_pickle=args.trust_pickle, limit=args.limit, use_labels=False
    )
    refs = [ref for r in recs for ref in r.images]
    prompts = [r.easy_prompt for r in recs for _ in range(3)]
    scores = score_images(scorer, refs, prompts, args.batch_size, args.num_workers, report)
    results = {}
    per_item = []
    for m, s in scores.items():
        s = s.reshape(-1, 3)
        ok = ~np.isnan(s).any(axis=1)
        results[m] = {**triplet_accuracy(s[ok, 0], s[ok, 1], s[ok, 2]), "n": int(ok.sum())}
    for i, r in enumerate(recs):
        per_item.append(
            {
                "easy_prompt": r.easy_prompt,
                **{f"{m}_I{k + 1}": _num(scores[m][3 * i + k]) for m in scores for k in range(3)},
            }
        )
    return {
        "kind": "triplets",
        "protocol": "table1",
        "n": len(recs),
        "report": report.to_dict(),
        "results": results,
        "_items": per_item,
    }


def _score_pairs(scorer, path, args):
    recs, report = load_pairs(path, image_root=args.image_root, limit=args.limit)
    refs = [ref for r in recs for ref in r.images]
    prompts = [r.prompt for r in recs for _ in range(2)]
    scores = score_images(scorer, refs, prompts, args.batch_size, args.num_workers, report)
    labels = np.array([r.label_0 for r in recs], dtype=np.float64)
    return recs, report, {m: s.reshape(-1, 2) for m, s in scores.items()}, labels


def evaluate_pairs(scorer, args) -> dict[str, Any]:
    recs, report, scores, labels = _score_pairs(scorer, args.data, args)
    val = _score_pairs(scorer, args.val_data, args) if args.val_data else None
    results = {}
    for m, s in scores.items():
        ok = ~np.isnan(s).any(axis=1)
        p0, p1, lab = s[ok, 0], s[ok, 1], labels[ok]
        if val is not None:
            vs, vlab = val[2][m], val[3]
            vok = ~np.isnan(vs).any(axis=1)
            vp0, vp1, vlab = vs[vok, 0], vs[vok, 1], vlab[vok]
        else:
            vp0, vp1, vlab = p0, p1, lab
        grid = _tie_grid(args.tie_grid, m, vp0, vp1)
        t, val_acc = choose_tie_threshold(vp0, vp1, vlab, grid)
        decisive = lab != 0.5
        better = np.where(lab[decisive] > 0.5, p0[decisive], p1[decisive])
        worse = np.where(lab[decisive] > 0.5, p1[decisive], p0[decisive])
        results[m] = {
            "tie_aware": tie_aware_accuracy(p0, p1, lab, t),
            "threshold": t,
            "threshold_from": "val-data" if val is not None else "test data (optimistic)",
            "val_tie_aware": val_acc,
            "accuracy_no_ties": pairwise_accuracy(better, worse),
            "n": int(ok.sum()),
            "n_ties": int((lab == 0.5).sum()),
        }
    per_item = [
        {
            "prompt": r.prompt,
            "label_0": r.label_0,
            **{f"{m}_{k}": _num(scores[m][i, k]) for m in scores for k in range(2)},
        }
        for i, r in enumerate(recs)
    ]
    out = {
        "kind": "pairs",
        "protocol": "pickscore_tie_aware",
        "n": len(recs),
        "report": report.to_dict(),
        "results": results,
        "_items": per_item,
    }
    if val is not None:
        out["val_report"] = val[1].to_dict()
    return out


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def format_table(res: dict[str, Any]) -> str:
    rows = res["results"]
    if res["kind"] == "triplets":
        cols = ("I2>I1", "I3>I2", "I3>I1", "avg")
        head = f"{'metric':<12}" + "".join(f"{c:>9}" for c in cols) + f"{'n':>8}"
        lines = [head, "-" * len(head)]
        for m, r in rows.items():
            lines.append(f"{m:<12}" + "".join(f"{100 * r[c]:>9.2f}" for c in cols) + f"{r['n']:>8}")
    else:
        head = f"{'metric':<12}{'tie-aware':>11}{'no-ties':>9}{'t':>9}{'n':>8}{'ties':>7}"
        lines = [head, "-" * len(head)]
        for m, r in rows.items():
            lines.append(
                f"{m:<12}{100 * r['tie_aware']:>11.2f}{100 * r['accuracy_no_ties']:>9.2f}"
                f"{r['threshold']:>9.4g}{r['n']:>8}{r['n_ties']:>7}"
            )
    return "\n".join(lines)


def resolve_metrics(args) -> tuple[list[str], dict[str, str]]:
    sources: dict[str, str] = {}
    for item in args.source:
        if "=" not in item:
            raise ValueError(f"--source {item!r}: expected METRIC=PATH")
        k, v = item.split("=", 1)
        sources[k.strip()] = v.strip()
    if args.ict:
        sources["ict"] = args.ict
    if args.hp:
        sources["hp"] = args.hp
    if args.metrics in (None, ""):
        metrics = [m for m in ("ict", "hp") if m in sources]
        if len(metrics) == 2:
            metrics.append("ict_hp")
        metrics += [m for m in sources if m not in metrics and m not in ("ict", "hp")]
        if not metrics:
            raise ValueError("give --ict and/or --hp, or --metrics")
    elif args.metrics == "all":
        metrics = list_metrics()
    else:
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    known = set(list_metrics())
    bad = [m for m in metrics if m not in known]
    if bad:
        raise ValueError(f"--metrics: unknown {bad}; choose from {sorted(known)}")
    return metrics, sources


def run(args) -> dict[str, Any]:
    from icthp_core.scoring.scorer import MultiScorer

    metrics, sources = resolve_metrics(args)
    kind = detect_kind(args.data, args.trust_pickle) if args.kind == "auto" else args.kind
    scorer = MultiScorer(metrics, sources, device=args.device, dtype=args.dtype)
    res = evaluate_triplets(scorer, args) if kind == "triplets" else evaluate_pairs(scorer, args)
    res = {"data": str(args.data), "metrics": metrics, "sources": sources, **res}
    items = res.pop("_items")
    if args.scores_out:
        Path(args.scores_out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.scores_out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(it) + "\n" for it in items)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2))
    return res


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; prints the table (and the data report), returns an exit code."""
    parser = add_eval_arguments(
        argparse.ArgumentParser(
            prog="icthp eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        res = run(args)
    except (ValueError, FileNotFoundError, UnsafeDataError, ICTHPError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rep = res["report"]
    print(
        f"{res['data']}: {res['kind']}, {rep['kept']}/{rep['total']} rows used"
        + (f", skipped {rep['skipped']}" if rep["skipped"] else "")
        + (f", {rep['decode_failures']} unreadable images" if rep["decode_failures"] else "")
    )
    print(format_table(res))
    if args.out:
        print(f"results written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
