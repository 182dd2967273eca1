"""Preference accuracy of any registered metrics on triplets (paper Table 1) or pairs (PickScore's protocol).

Library functions with explicit parameters; the command line is `icthp_cli/eval.py`.

- Triplets (Pick-High): every image is scored with its easy prompt; the rows of Table 1 (Average, I2>I1, I3>I2,
  I3>I1) follow the chosen protocol of :mod:`icthp_core.evaluation.protocols` ("paper" or "upstream"), with
  percentile-bootstrap intervals over triplets, plus a "Random" row (seeded uniform scores) and an
  "ICT-groundtruth" row (the ICT labels E1, E2, E3 = 1) when the data carries them.
- Pairs (Pick-a-Pic v2): PickScore's tie-aware accuracy with the threshold chosen on validation pairs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from icthp_core.data.batch import iter_file_batches
from icthp_core.data.datasets import LoadReport, PairRecord, TripletRecord
from icthp_core.errors import ConfigError, DataError
from icthp_core.evaluation.metrics import (
    DEFAULT_TIE_GRID,
    choose_tie_threshold,
    pairwise_accuracy,
    relative_tie_grid,
    tie_aware_accuracy,
)
from icthp_core.evaluation.protocols import (
    PAIR_KEYS,
    get_protocol,
    hp_triplet_softmax,
    ict_hp_upstream,
    round_to_precision,
    triplet_accuracy_table,
)
from icthp_core.scoring.registry import metric_label

logger = logging.getLogger("icthp.eval")

__all__ = [
    "score_images",
    "evaluate_triplets",
    "protocol_scores",
    "protocol_metrics",
    "evaluate_pairs",
    "tie_grid",
    "format_table",
    "markdown_table",
    "RANDOM",
    "GROUNDTRUTH",
]

RANDOM = "random"
GROUNDTRUTH = "ict_groundtruth"
_ROW_LABELS = {RANDOM: "Random", GROUNDTRUTH: "ICT-groundtruth"}


def score_images(
    scorer,
    images: Sequence[str | bytes],
    prompts: Sequence[str],
    batch_size: int = 32,
    workers: int = 2,
    report: LoadReport | None = None,
) -> dict[str, np.ndarray]:
    """Scores [N] per metric of `scorer` (a MultiScorer); NaN where an image could not be decoded (counted).
    Images are decoded with the scorer's `decode_policy`."""
    n = len(images)
    out = {m: np.full(n, np.nan) for m in scorer.metrics}
    items = list(zip(images, prompts, strict=True))
    k = 0
    policy = getattr(scorer, "decode_policy", "view")
    for batch in iter_file_batches(items, scorer.preprocess_modes, batch_size, workers, policy=policy):
        rows = batch["rows"]
        ok = [k + j for j, r in enumerate(rows) if r["error"] is None]
        for j, r in enumerate(rows):
            if r["error"] is not None:
                logger.warning("image %d unreadable: %s", k + j, r["error"])
                if report is not None:
                    report.decode_failures += 1
        if ok:
            scores = scorer.score_pixels(batch["pixels"], [prompts[i] for i in ok] if scorer.needs_prompt else None)
            for m, v in scores.items():
                out[m][ok] = v.numpy()
        k += len(rows)
    return out


def _hp_logits(hp: np.ndarray) -> np.ndarray:
    """HP logits recovered from HP scores (sigmoid outputs): log(p) - log(1 - p) in float64.

    Only a fallback for a scorer without `hp_logit`: a saturated score (exactly 0 or 1 in float32) gives an infinite
    logit, and that triplet is dropped (counted and named in the results).
    """
    p = np.asarray(hp, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)


def _flat_row(table: dict) -> dict[str, Any]:
    """{"I2>I1": acc, ..., "avg": acc, "n": N, "dropped": [rows], "ci": {key: [low, high]}} (flat accuracies)."""
    keys = (*PAIR_KEYS, "avg")
    row: dict[str, Any] = {k: table[k]["acc"] for k in keys}
    row["n"] = table["n"]
    row["dropped"] = table["dropped"]
    row["ci"] = {k: [table[k]["low"], table[k]["high"]] for k in keys}
    return row


def _require_rows(records: Sequence, report: LoadReport | None, what: str) -> None:
    """No usable row (every image missing, say): one line naming the file and why the rows were skipped."""
    if records:
        return
    where = report.summary() if report is not None else f"no {what}"
    hint = " (is --image-root right? relative image paths resolve from the data file's folder)"
    raise DataError(f"no usable {what} to evaluate: {where}" + (hint if "image_not_found" in where else ""))


def _require_scored(ok: np.ndarray, report: LoadReport | None, what: str) -> None:
    """Rows were read but none could be scored (every image unreadable): one line instead of a NaN table."""
    if ok.any():
        return
    src = report.source if report is not None else "the data"
    raise DataError(f"{src}: no {what} could be scored ({ok.size} read; their images failed to decode)")


def protocol_scores(scores: dict[str, np.ndarray], protocol: str, precision: str = "fp32") -> dict[str, np.ndarray]:
    """The [N, 3] score arrays each Table-1 row compares under `protocol` ("paper" | "upstream").

    paper: every metric as scored (ICT-HP = ICT x HP). upstream: ICT-HP = ICT x softmax over the triplet of the raw
    HP logits (`hp_logit` when scored, else recovered from `hp`), HP = that softmax, as upstream's trainer; with
    `precision="bf16"` every compared value is rounded to bfloat16 as upstream's bf16 validation computes it.
    """
    proto = get_protocol(protocol)
    used = {m: round_to_precision(s, precision) for m, s in scores.items()}
    if proto.ict_hp != "triplet_softmax" or not ({"hp", "ict_hp"} & set(scores)):
        return used
    if "hp_logit" in scores:
        logits = scores["hp_logit"]
    elif "hp" in scores:
        logits = _hp_logits(scores["hp"])
    else:
        raise ConfigError("protocol upstream: ict_hp needs the hp_logit (or hp) scores")
    if "ict_hp" in scores:
        if "ict" not in scores:
            raise ConfigError("protocol upstream: ict_hp needs the ict scores")
        used["ict_hp"] = ict_hp_upstream(scores["ict"], logits, precision)
    if "hp" in scores:
        used["hp"] = hp_triplet_softmax(logits, precision)  # the trainer's HP accuracy compares these
    return used


def evaluate_triplets(
    scorer,
    records: Sequence[TripletRecord],
    protocol: str = "paper",
    batch_size: int = 32,
    workers: int = 2,
    report: LoadReport | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    ties: str | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Table-1 accuracies of every metric of `scorer` on triplet records under `protocol` ("paper"/"upstream").

    `ties` ("zero" | "half") overrides the protocol's credit of an equal pair; `precision` "bf16" rounds the
    compared values to bfloat16 (see :func:`protocol_scores`). Returns {"kind", "protocol", "tie_credit", "n",
    "results": {row: {...}}, "dropped": {row: [triplet index, ...]}, "items": [...]}; "results" holds each metric
    (`hp_logit` only when `hp` is absent: the same order), then "random" and (if every record has labels)
    "ict_groundtruth".
    """
    proto = get_protocol(protocol, ties)
    _require_rows(records, report, "triplets")
    images = [ref for r in records for ref in r.images]
    prompts = [r.easy_prompt for r in records for _ in range(3)]
    flat = score_images(scorer, images, prompts, batch_size, workers, report)
    scores = {m: s.reshape(-1, 3) for m, s in flat.items()}
    _require_scored(np.all([np.isfinite(s).all(axis=1) for s in scores.values()], axis=0), report, "triplet")
    used = protocol_scores(scores, proto.name, precision)
    shown = [m for m in scorer.metrics if not (m == "hp_logit" and "hp" in scorer.metrics)]
    rows = {m: used[m] for m in shown}
    rows[RANDOM] = np.random.default_rng(seed).random((len(records), 3))
    if records and all(r.labels for r in records):
        rows[GROUNDTRUTH] = np.array([[r.labels["E1"], r.labels["E2"], 1.0] for r in records])
    results = {
        name: _flat_row(triplet_accuracy_table(s, proto.tie_credit, n_boot, confidence, seed))
        for name, s in rows.items()
    }
    dropped = {name: r["dropped"] for name, r in results.items() if r["dropped"]}
    for name, idx in dropped.items():
        logger.warning("%s: %d of %d triplets dropped (a non-finite score or an unreadable image): rows %s",
                       _label(name), len(idx), len(records), idx[:20])  # fmt: skip
    items = [
        {"easy_prompt": r.easy_prompt, **{f"{m}_I{k + 1}": _num(scores[m][i, k]) for m in scores for k in range(3)}}
        for i, r in enumerate(records)
    ]
    return {
        "kind": "triplets",
        "protocol": proto.name,
        "protocol_description": proto.description,
        "tie_credit": proto.tie_credit,
        "ties": "half" if proto.tie_credit == 0.5 else "zero",
        "precision": precision,
        "confidence": confidence,
        "n_boot": n_boot,
        "n": len(records),
        "results": results,
        "dropped": dropped,
        "items": items,
    }


def tie_grid(spec: str, metric: str, p0, p1) -> list[float]:
    """Tie thresholds to try: 'pickscore' (0, 0.1, ..., 1), 'relative', a comma list, or 'auto'."""
    if spec == "auto":
        spec = "pickscore" if metric == "pickscore" else "relative"
    if spec == "pickscore":
        return list(DEFAULT_TIE_GRID)
    if spec == "relative":
        return relative_tie_grid(p0, p1)
    try:
        return [float(x) for x in spec.split(",")]
    except ValueError:
        raise ConfigError(f"--tie-grid {spec!r}: expected auto, pickscore, relative or a comma list") from None


def _pair_scores(scorer, records, batch_size, workers, report):
    images = [ref for r in records for ref in r.images]
    prompts = [r.prompt for r in records for _ in range(2)]
    scores = score_images(scorer, images, prompts, batch_size, workers, report)
    labels = np.array([r.label_0 for r in records], dtype=np.float64)
    return {m: s.reshape(-1, 2) for m, s in scores.items()}, labels


def evaluate_pairs(
    scorer,
    records: Sequence[PairRecord],
    val_records: Sequence[PairRecord] | None = None,
    tie_grid_spec: str = "auto",
    batch_size: int = 32,
    workers: int = 2,
    report: LoadReport | None = None,
    val_report: LoadReport | None = None,
) -> dict[str, Any]:
    """PickScore's tie-aware accuracy (threshold from `val_records`, else from the data: optimistic)."""
    _require_rows(records, report, "pairs")
    if val_records is not None:
        _require_rows(val_records, val_report, "validation pairs")
    scores, labels = _pair_scores(scorer, records, batch_size, workers, report)
    val = _pair_scores(scorer, val_records, batch_size, workers, val_report) if val_records is not None else None
    results = {}
    for m, s in scores.items():
        ok = np.isfinite(s).all(axis=1)  # a pair with an unreadable image or a non-finite score: named below
        _require_scored(ok, report, "pair")
        p0, p1, lab = s[ok, 0], s[ok, 1], labels[ok]
        if val is not None:
            vs, vlab = val[0][m], val[1]
            vok = np.isfinite(vs).all(axis=1)
            _require_scored(vok, val_report, "validation pair")
            vp0, vp1, vlab = vs[vok, 0], vs[vok, 1], vlab[vok]
        else:
            vp0, vp1, vlab = p0, p1, lab
        t, val_acc = choose_tie_threshold(vp0, vp1, vlab, tie_grid(tie_grid_spec, m, vp0, vp1))
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
            "dropped": [int(i) for i in np.flatnonzero(~ok)],
        }
    items = [
        {
            "prompt": r.prompt,
            "label_0": r.label_0,
            **{f"{m}_{k}": _num(scores[m][i, k]) for m in scores for k in (0, 1)},
        }
        for i, r in enumerate(records)
    ]
    dropped = {m: r["dropped"] for m, r in results.items() if r["dropped"]}
    res = {"kind": "pairs", "protocol": "pickscore_tie_aware", "n": len(records), "results": results}
    return {**res, "dropped": dropped, "items": items}


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _label(name: str) -> str:
    return _ROW_LABELS.get(name) or metric_label(name)


def _cell(row: dict, key: str) -> str:
    lo, hi = row["ci"][key]
    ci = "" if math.isnan(lo) else f" [{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"{100 * row[key]:.2f}{ci}"


def _dropped_lines(res: dict[str, Any]) -> list[str]:
    """One line per row that left items out, naming them (data row indices, 0-based)."""
    unit = "triplet(s)" if res["kind"] == "triplets" else "pair(s)"
    out = []
    for name, idx in res.get("dropped", {}).items():
        shown = ", ".join(map(str, idx[:20])) + (", ..." if len(idx) > 20 else "")
        out.append(f"{_label(name)}: {len(idx)} {unit} dropped (non-finite score or unreadable image): {shown}")
    return out


_TABLE1_COLS = ("avg", *PAIR_KEYS)
_TABLE1_HEADS = ("Average", *PAIR_KEYS)


def format_table(res: dict[str, Any]) -> str:
    """A plain-text table of `evaluate_triplets` / `evaluate_pairs` results (Table 1 layout for triplets)."""
    rows = res["results"]
    if res["kind"] == "triplets":
        cells = {name: [_cell(r, c) for c in _TABLE1_COLS] for name, r in rows.items()}
        w = max(len(x) for c in cells.values() for x in c)
        lw = max(16, *(len(_label(n)) for n in rows))
        head = f"{'model':<{lw}}" + "".join(f"  {h:>{w}}" for h in _TABLE1_HEADS) + f"{'n':>8}{'dropped':>9}"
        lines = [head, "-" * len(head)]
        for name, r in rows.items():
            cols = "".join(f"  {c:>{w}}" for c in cells[name])
            lines.append(f"{_label(name):<{lw}}{cols}{r['n']:>8}{len(r['dropped']):>9}")
        lines.append(f"protocol {res['protocol']}: {res['protocol_description']}; [{100 * res['confidence']:.0f}% CI]")
        lines += _dropped_lines(res)
        return "\n".join(lines)
    return "\n".join([_pairs_table(rows), *_dropped_lines(res)])


def _pairs_table(rows: dict[str, dict]) -> str:
    """Pairs results: columns sized to their cells, two spaces apart; a threshold chosen on the test data itself is
    flagged `*` with a note below."""
    heads = ("model", "tie-aware", "no-ties", "t", "n", "ties")
    body = []
    for m, r in rows.items():
        flag = "*" if r.get("threshold_from", "").endswith("(optimistic)") else ""
        body.append(
            [
                _label(m),
                f"{100 * r['tie_aware']:.2f}",
                f"{100 * r['accuracy_no_ties']:.2f}",
                f"{r['threshold']:.4g}{flag}",
                str(r["n"]),
                str(r["n_ties"]),
            ]
        )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(heads)]
    fmt = lambda cells: "  ".join(  # noqa: E731 - first column left-aligned, numbers right-aligned
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    lines = [fmt(heads), "-" * (sum(widths) + 2 * (len(widths) - 1))] + [fmt(b) for b in body]
    if any(b[3].endswith("*") for b in body):
        lines.append("* optimistic threshold: chosen on the test data itself; pass --val-data for an honest one")
    return "\n".join(lines)


def markdown_table(res: dict[str, Any]) -> str:
    """The results as a Markdown table (Table 1 layout for triplets, with the intervals)."""
    rows = res["results"]
    if res["kind"] == "triplets":
        lines = [
            f"Protocol `{res['protocol']}` ({res['protocol_description']}); n = {res['n']} triplets; "
            f"{100 * res['confidence']:.0f}% percentile-bootstrap intervals ({res['n_boot']} resamples).",
            "",
            "| Model | " + " | ".join(_TABLE1_HEADS) + " | n | dropped |",
            "|---|" + "---:|" * (len(_TABLE1_HEADS) + 2),
        ]
        lines += [
            f"| {_label(n)} | " + " | ".join(_cell(r, c) for c in _TABLE1_COLS) + f" | {r['n']} | {len(r['dropped'])} |"
            for n, r in rows.items()
        ]
        drops = _dropped_lines(res)
        return "\n".join(lines) + ("\n\n" + "\n".join(drops) if drops else "") + "\n"
    lines = ["| Model | tie-aware | no ties | threshold | n | ties |", "|---|---:|---:|---:|---:|---:|"]
    optimistic = [r.get("threshold_from", "").endswith("(optimistic)") for r in rows.values()]
    lines += [
        f"| {_label(m)} | {100 * r['tie_aware']:.2f} | {100 * r['accuracy_no_ties']:.2f} | {r['threshold']:.4g}"
        f"{'*' if opt else ''} | {r['n']} | {r['n_ties']} |"
        for (m, r), opt in zip(rows.items(), optimistic, strict=True)
    ]
    if any(optimistic):
        lines += ["", "\\* optimistic threshold: chosen on the test data itself (pass --val-data)."]
    drops = _dropped_lines(res)
    return "\n".join(lines) + ("\n\n" + "\n".join(drops) if drops else "") + "\n"


def protocol_metrics(metrics: Sequence[str], protocol: str) -> list[str]:
    """The metrics a scorer must compute for `metrics` under `protocol`: upstream's ICT-HP and HP rows need ICT and
    the raw HP logits (`hp_logit`, the same HP instance: no second model, no triplet lost to a saturated sigmoid)."""
    out = list(metrics)
    if get_protocol(protocol).ict_hp == "triplet_softmax" and {"hp", "ict_hp"} & set(out):
        needed = ["ict"] if "ict_hp" in out else []
        out = [m for m in needed if m not in out] + out
        if "hp_logit" not in out:
            out.append("hp_logit")
    return out
