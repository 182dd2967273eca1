"""Cost and faithfulness of the explanations (icthp_core.explain) on random-weight ICT/HP models.

Per image: the time of one plain score (the unit), of word contributions (removal: one batched text pass;
integrated gradients: --ig-steps text passes with backward), of occlusion (grid^2 + 1 image passes) and of attention
relevance (one forward + backward); then deletion / insertion AUCs of the occlusion and relevance maps against
random orders (--curve-steps steps on the occlusion grid; lower deletion / higher insertion = more faithful).

Random weights: the AUCs say whether a map finds what *this* function depends on (the machinery), not how the
published ICT/HP behave; the timings are those of the real architectures (ViT-H/14 towers) on this machine.

    python bench/bench_explain.py --config tiny --images 4 --out bench/results/explain_tiny.json
    python bench/bench_explain.py --config vit-h --metric ict --images 1 --grid 4 --curve-steps 4 --random 1 \
        --ig-steps 8 --out bench/results/explain_vith_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def _init(module: torch.nn.Module, seed: int) -> None:
    """Random weights on a materialised (to_empty) module: N(0, 0.02) matrices, unit norms, zero biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1 and ("ln" in name or "norm" in name):
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def build_scorer(config: str, device: str, seed: int = 0, metric: str = "ict_hp"):
    """An ICTHPScorer with random ICT (full CLIP) and/or HP (vision tower + head) models of `config` (tiny | vit-h):
    only those `metric` needs."""
    from icthp_core.checkpoints.config import VIT_H_14
    from icthp_core.checkpoints.loading import build_clip
    from icthp_core.scoring.models import HPModel, ICTModel
    from icthp_core.scoring.scorer import ICTHPScorer
    from icthp_core.testing.tiny import TINY_CLIP, tiny_head

    cfg = TINY_CLIP if config == "tiny" else VIT_H_14
    models: dict = {}
    if metric in ("ict", "ict_hp"):
        clip = build_clip(cfg).to_empty(device=device).eval()
        _init(clip, seed)
        clip.logit_scale.data.fill_(float(np.log(1 / 0.07)))
        ctx = clip.positional_embedding.shape[0]
        clip.attn_mask = torch.full((ctx, ctx), float("-inf"), device=device).triu_(1)
        models["ict"] = ICTModel(clip).requires_grad_(False)
    if metric in ("hp", "ict_hp"):
        visual = build_clip(cfg, vision_only=True).to_empty(device=device).eval()
        _init(visual, seed + 1)
        head = tiny_head(cfg["projection_dim"], seed=seed + 2, dims=(64, 32, 16, 8, 1)).to(device)
        models["hp"] = HPModel(visual, head).eval().requires_grad_(False)
    names = [metric] if metric != "ict_hp" else ["ict", "hp", "ict_hp"]
    return ICTHPScorer(names, models=models, device=device)


def scene(i: int, size=(512, 384)) -> Image.Image:
    """A picture with a background, a ground band, a rectangle and a disc, different for each i."""
    rng = np.random.default_rng(i)
    w, h = size
    im = Image.new("RGB", size, tuple(int(v) for v in rng.integers(60, 230, 3)))
    d = ImageDraw.Draw(im)
    d.rectangle([0, int(h * 0.65), w, h], fill=tuple(int(v) for v in rng.integers(20, 200, 3)))
    x, y = int(rng.integers(20, w // 2)), int(rng.integers(20, h // 2))
    d.rectangle([x, y, x + w // 4, y + h // 4], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    cx, cy, r = int(rng.integers(w // 3, w - 40)), int(rng.integers(40, h - 40)), int(rng.integers(20, 60))
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


#: CPU seconds of this process (all its threads) per timed call, by name: on a shared CPU the wall time grows with
#: the other load, the CPU time much less (ratios are reported for both)
CPU_S: dict[str, float] = {}


def _timed(fn, *args, name: str | None = None, **kwargs):
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    if name:
        CPU_S[name] = time.process_time() - c
    return out, time.perf_counter() - t


def fused_gap(scorer, metric: str, x: torch.Tensor, prompt: str | None) -> float:
    """Largest |score(fused attention) - score(explicit attention path used by relevance)| on `x`."""
    from icthp_core.explain.attention import recording_attention, vision_tower
    from icthp_core.explain.common import base_metrics, metric_fn

    f = metric_fn(scorer, metric, prompt)
    towers = [vision_tower(scorer.models[m]) for m in base_metrics(metric)]
    with torch.no_grad():
        fused = f(x)
        with recording_attention(towers):
            explicit = f(x)
    return float((fused - explicit).abs().max())


def bench_image(scorer, metric: str, img: Image.Image, prompt: str, a) -> dict:
    """Timings and AUCs for one image."""
    from icthp_core.explain.common import image_tensor, metric_fn, text_metrics
    from icthp_core.explain.curves import evaluate
    from icthp_core.explain.regions import occlusion, relevance_map, to_grid
    from icthp_core.explain.words import word_contributions

    x = image_tensor(img).to(scorer.device)
    p = prompt if text_metrics(metric) else None
    f = metric_fn(scorer, metric, p)
    with torch.no_grad():
        f(x)  # warm-up
        t_score = float(np.median([_timed(f, x, name="score")[1] for _ in range(3)]))
    row: dict = {"score_s": t_score, "fused_vs_explicit_max_abs": fused_gap(scorer, metric, x, p)}
    if p is not None:
        pixels = {k: v.to(scorer.device) for k, v in scorer.preprocess([img]).items()}
        _, row["words_removal_s"] = _timed(word_contributions, scorer, pixels, p, metric, None, name="words_removal")
        words, t = _timed(word_contributions, scorer, pixels, p, metric, a.ig_steps, name="words_ig")
        CPU_S["words_ig"] -= CPU_S["words_removal"]
        row["words_ig_s"] = t - row["words_removal_s"]
        row["ig_relative_error"] = words["ig_check"]["relative_error"]
        row["n_words"] = len(words["words"])
    (occ, _), row["occlusion_s"] = _timed(occlusion, scorer, metric, x, p, a.grid, a.batch_size, name="occlusion")
    rel, row["relevance_s"] = _timed(relevance_map, scorer, metric, x, p, name="relevance")
    row.update({f"{k}_cpu": v for k, v in CPU_S.items()})
    for name, heat in (("occlusion", occ), ("relevance", to_grid(rel, a.grid))):
        ev = evaluate(scorer, metric, x, p, heat, steps=a.curve_steps, n_random=a.random)
        row[name] = {k: v for k, v in ev.items() if not k.endswith("_curve")}
    return row


def summarise(rows: list[dict]) -> dict:
    """Means over images; ratios of each method's time to one plain score."""
    keys = [k for k in rows[0] if k.endswith("_s")]
    gap = max(r["fused_vs_explicit_max_abs"] for r in rows)
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out.update({k.removesuffix("_s") + "_x_score": out[k] / out["score_s"] for k in keys if k != "score_s"})
    cpu = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k.endswith("_cpu")}
    out.update({k + "_s": v for k, v in cpu.items()})
    out.update({k + "_x_score": v / cpu["score_cpu"] for k, v in cpu.items() if k != "score_cpu"})
    for method in ("occlusion", "relevance"):
        for k in ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc"):
            out[f"{method}_{k}"] = float(np.mean([r[method][k] for r in rows]))
        out[f"{method}_beats_random_deletion"] = sum(r[method]["beats_random_deletion"] for r in rows)
        out[f"{method}_beats_random_insertion"] = sum(r[method]["beats_random_insertion"] for r in rows)
    if "ig_relative_error" in rows[0]:
        out["ig_relative_error_max"] = max(r["ig_relative_error"] for r in rows)
    out["fused_vs_explicit_max_abs"] = gap
    out["images"] = len(rows)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["tiny", "vit-h"], default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--metric", default="ict_hp", choices=["ict", "hp", "ict_hp"])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--grid", type=int, default=7)
    ap.add_argument("--curve-steps", type=int, default=8)
    ap.add_argument("--random", type=int, default=3, help="random orders averaged for the baseline AUCs")
    ap.add_argument("--ig-steps", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prompt", default="a red disc and a blue box above green grass, photo")
    ap.add_argument("--out", help="write the JSON result here")
    a = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    t0, load_start = time.time(), os.getloadavg()
    scorer = build_scorer(a.config, a.device, metric=a.metric)
    build_s = time.time() - t0
    rows = [bench_image(scorer, a.metric, scene(i), a.prompt, a) for i in range(a.images)]
    res = {
        "command": "python bench/bench_explain.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "config": a.config,
        "metric": a.metric,
        "device": a.device,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "load_average_start": load_start,
        "build_s": build_s,
        "settings": {"grid": a.grid, "curve_steps": a.curve_steps, "random": a.random, "ig_steps": a.ig_steps},
        "summary": summarise(rows),
        "rows": rows,
        "seconds": time.time() - t0,
        "load_average_end": os.getloadavg(),
    }
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text)
    print(json.dumps(res["summary"], indent=1))
    return res


if __name__ == "__main__":
    main()
