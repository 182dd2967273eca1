"""Precision table: max |Δ| and pairwise ranking flips of fp16 and bf16 against fp32, per metric, one command.

    python bench/precision.py --device cpu --prompts 4 --per-prompt 6                    # CPU (docs/evaluation.md)
    python bench/precision.py --device cuda --config small --prompts 16 --per-prompt 16  # on a GPU

Random weights in the published layouts: ICT/HP on mid-size CLIP towers (`--config mid`: width 256, 4 layers,
patch 32 — half-precision matmuls are ~50x slower than fp32 on CPUs without AVX512-BF16/FP16; `small` = the
ViT-B/16-sized towers of bench/bench_score.py), CLIP and PickScore reuse the ICT folder (same architecture, their
own tokenizer and scale), ImageReward and BLIP ITC/ITM on the tiny random BLIP models of
`icthp_core.testing.blip`. Images: JPEGs of mixed sizes; each prompt scores its own group of images. A flip = a
pair of images of one prompt whose order (strict sign of the score difference) differs from fp32's; ties in fp32
are left out. Prints Markdown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))


MID = {
    "projection_dim": 256,
    "text_config": {
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "hidden_act": "gelu",
        "projection_dim": 256,
    },
    "vision_config": {
        "image_size": 224,
        "patch_size": 32,
        "hidden_size": 256,
        "intermediate_size": 1024,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "hidden_act": "gelu",
        "projection_dim": 256,
    },
}


def fixture(root: Path, n_images: int, config: str) -> dict[str, str]:
    import bench_score
    from bench_score import make_fixture

    from icthp_core.testing.blip import save_tiny_blip_retrieval, save_tiny_imagereward

    bench_score.CONFIGS.setdefault("mid", MID)
    make_fixture(root, config, n_images)
    ir = save_tiny_imagereward(root / "ImageReward", seed=0)
    blip = save_tiny_blip_retrieval(root / "BLIP", seed=0)
    ict = str(root / "ICT")
    return {
        "ict": ict,
        "hp": str(root / "HP"),
        "clip": ict,
        "pickscore": ict,
        "imagereward": str(ir),
        "blip_itc": str(blip),
        "blip_itm": str(blip),
    }


def flips(ref: np.ndarray, other: np.ndarray, groups: list[list[int]]) -> tuple[int, int]:
    n = bad = 0
    for g in groups:
        for i, j in combinations(g, 2):
            d0 = np.sign(ref[i] - ref[j])
            if d0 == 0:
                continue
            n += 1
            bad += int(np.sign(other[i] - other[j]) != d0)
    return bad, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--per-prompt", type=int, default=8)
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"])
    ap.add_argument("--config", choices=["mid", "small"], default="mid", help="size of the ICT/HP/CLIP towers")
    args = ap.parse_args()
    from icthp_core.scoring.scorer import MultiScorer

    torch.manual_seed(0)
    n = args.prompts * args.per_prompt
    words = ["a red car", "a tiny dragon in a teacup", "a city at night", "a portrait painting", "a blue sky"]
    prompts = [f"{words[i % len(words)]}, style {i}" for i in range(args.prompts) for _ in range(args.per_prompt)]
    groups = [list(range(p * args.per_prompt, (p + 1) * args.per_prompt)) for p in range(args.prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = fixture(root, n, args.config)
        files = sorted(str(f) for f in (root / "images").iterdir())[:n]
        metrics = ["ict", "hp", "ict_hp", "clip", "pickscore", "imagereward", "blip_itc", "blip_itm"]
        scores, seconds = {}, {}
        for dtype in ["fp32", *args.dtypes]:
            scorer = MultiScorer(metrics, sources, device=args.device, dtype=dtype)
            t0 = time.perf_counter()
            rows = list(scorer.score_files(list(zip(files, prompts, strict=True)), batch_size=16, num_workers=0))
            seconds[dtype] = time.perf_counter() - t0
            print(f"{dtype}: {seconds[dtype]:.1f} s", file=sys.stderr, flush=True)
            scores[dtype] = {m: np.array([r[m] for r in rows], dtype=np.float64) for m in metrics}
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} thr)"
    print(f"config {args.config}; device: {dev}; {n} images, {args.prompts} prompts x {args.per_prompt}", end="")
    print(f"; torch {torch.__version__}")
    print(f"seconds per pass: {', '.join(f'{k} {v:.1f}' for k, v in seconds.items())}\n")
    head = "| metric | fp32 range | " + " | ".join(f"{d} max abs diff | {d} flips" for d in args.dtypes) + " |"
    print(head)
    print("|---|---|" + "---:|---:|" * len(args.dtypes))
    for m in metrics:
        ref = scores["fp32"][m]
        cells = [f"{ref.min():.4g}..{ref.max():.4g}"]
        for d in args.dtypes:
            bad, total = flips(ref, scores[d][m], groups)
            cells += [f"{np.abs(scores[d][m] - ref).max():.2e}", f"{bad}/{total} ({100 * bad / max(total, 1):.1f}%)"]
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
