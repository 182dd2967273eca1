"""Throughput benchmark: icthp_core vs an upstream-style loop, same images, same (random) weights, one command.

Upstream style (BarretBa/ICTHP eval script): two full transformers CLIPModels in fp32, CLIPProcessor per image,
one image per call, text encoded every call. Ours: `icthp_core.MultiScorer.score_files` (DataLoader decoding,
batching, cached text features, SDPA, optional bf16).

    python bench/bench_score.py --config vit-h --device cuda --dtype bf16 --batch-sizes 1 8 32 64 --images 512
    python bench/bench_score.py --config small --device cpu --images 32        # CPU-sized smoke run

Each side runs in its own subprocess (clean peak-memory numbers); the parent prints the table and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "vit-h": None,  # icthp_core.checkpoints.config.VIT_H_14
    "small": {  # ViT-B/16-sized towers, for CPU runs
        "projection_dim": 512,
        "text_config": {
            "vocab_size": 49408,
            "max_position_embeddings": 77,
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "hidden_act": "gelu",
            "projection_dim": 512,
        },
        "vision_config": {
            "image_size": 224,
            "patch_size": 16,
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "hidden_act": "gelu",
            "projection_dim": 512,
        },
    },
}


def make_fixture(root: Path, config_name: str, n_images: int) -> None:
    """Random-weight ICT and HP checkpoints in the published layout, plus JPEG images of mixed sizes."""
    import numpy as np
    import torch
    from PIL import Image

    from icthp_core.checkpoints.config import VIT_H_14
    from icthp_core.checkpoints.files import save_state_dict
    from icthp_core.testing.tiny import save_tiny_clip, tiny_head

    cfg = CONFIGS[config_name] or VIT_H_14
    if not (root / "ICT" / "pytorch_model.bin").exists():
        save_tiny_clip(root / "ICT", seed=0, config=cfg, with_position_ids=False)
        save_tiny_clip(root / "HP" / "hp_backbone", seed=1, config=cfg, with_position_ids=False)
        head = tiny_head(cfg["projection_dim"], seed=2, dims=(1024, 128, 64, 16, 1))
        save_state_dict(head.state_dict(), root / "HP" / "hp_scorer" / "mlp_pytorch_model.bin")
    img_dir = root / "images"
    img_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = [(1024, 1024), (768, 1024), (1024, 576), (512, 512)]
    for i in range(n_images):
        p = img_dir / f"{i:05d}.jpg"
        if not p.exists():
            w, h = sizes[i % len(sizes)]
            small = rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8)
            Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(p, quality=90)
    torch.manual_seed(0)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mem(device: str) -> float:
    import resource

    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def run_upstream(root: Path, device: str, n: int) -> dict:
    import torch
    from torch import nn
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from icthp_core.scoring.text import tokenize  # the same open_clip tokens upstream used

    def load(d: Path) -> CLIPModel:
        cfg = json.loads((d / "config.json").read_text())
        m = CLIPModel(CLIPConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}))
        m.load_state_dict(torch.load(d / "pytorch_model.bin", weights_only=True), strict=False)
        return m.to(device).eval()

    ict, hp = load(root / "ICT"), load(root / "HP" / "hp_backbone")
    sd = torch.load(root / "HP" / "hp_scorer" / "mlp_pytorch_model.bin", weights_only=True)
    dims = [sd["layers.0.weight"].shape[1]] + [sd[f"layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6, 7)]
    mlp = nn.Sequential(
        nn.Linear(dims[0], dims[1]),
        nn.Dropout(0.2),
        nn.Linear(dims[1], dims[2]),
        nn.Dropout(0.2),
        nn.Linear(dims[2], dims[3]),
        nn.Dropout(0.1),
        nn.Linear(dims[3], dims[4]),
        nn.Linear(dims[4], dims[5]),
    )
    mlp.load_state_dict({k.removeprefix("layers."): v for k, v in sd.items()})
    mlp = mlp.to(device).eval()
    try:
        from transformers import CLIPImageProcessorPil as Proc
    except ImportError:
        Proc = CLIPImageProcessor
    proc = Proc(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3)
    from PIL import Image

    paths = sorted((root / "images").iterdir())[:n]
    prompt = "a tiny dragon taking a bath in a teacup"

    def feat(o):
        return o if isinstance(o, torch.Tensor) else o.pooler_output

    def one(path):
        with torch.no_grad():
            px = proc(images=Image.open(path), return_tensors="pt")["pixel_values"].to(device)
            ids = tokenize([prompt]).to(device)
            fi, ft = feat(ict.get_image_features(pixel_values=px)), feat(ict.get_text_features(input_ids=ids))
            s_ict = torch.nn.functional.cosine_similarity(fi, ft)
            s_hp = torch.sigmoid(mlp(feat(hp.get_image_features(pixel_values=px))))
            return (s_ict * s_hp.squeeze(-1)).item()

    one(paths[0])  # warm-up
    _sync(device)
    t = time.perf_counter()
    for p in paths:
        one(p)
    _sync(device)
    dt = time.perf_counter() - t
    return {
        "side": "upstream",
        "batch": 1,
        "images": len(paths),
        "seconds": dt,
        "img_per_s": len(paths) / dt,
        "peak_gib": _peak_mem(device),
    }


def run_ours(root: Path, device: str, dtype: str, batch: int, n: int, workers: int) -> dict:
    import torch

    from icthp_core import load_scorer

    scorer = load_scorer(root / "ICT", root / "HP", device=device, dtype=dtype)
    paths = [str(p) for p in sorted((root / "images").iterdir())[:n]]
    items = [(p, "a tiny dragon taking a bath in a teacup") for p in paths]
    list(scorer.score_files(items[:batch], batch_size=batch, num_workers=0))  # warm-up
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    rows = list(scorer.score_files(items, batch_size=batch, num_workers=workers))
    _sync(device)
    dt = time.perf_counter() - t
    assert all(r["error"] is None for r in rows)
    # model FLOPs per image (both image towers + head; text is encoded once per distinct prompt)
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, 224, 224, device=device, dtype=scorer.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        scorer.models["ict"].encode_image(x)
        scorer.models["hp"].encode_image(x)
    return {
        "side": "ours",
        "batch": batch,
        "dtype": dtype,
        "images": len(rows),
        "seconds": dt,
        "img_per_s": len(rows) / dt,
        "peak_gib": _peak_mem(device),
        "flops_per_img": fc.get_total_flops(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=list(CONFIGS), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--upstream-images", type=int, default=None, help="images for the slow loop (default: --images)")
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100 SXM: 989)")
    ap.add_argument("--root", default=None, help="fixture folder (default: a temp dir)")
    ap.add_argument("--role", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role:
        root = Path(args.root)
        if args.role == "upstream":
            res = run_upstream(root, args.device, args.upstream_images or args.images)
        else:
            res = run_ours(root, args.device, args.dtype, args.batch, args.images, args.workers)
        print("RESULT " + json.dumps(res))
        return
    root = Path(args.root or tempfile.mkdtemp(prefix="icthp_bench_"))
    make_fixture(root, args.config, args.images)
    base = [
        sys.executable,
        __file__,
        "--root",
        str(root),
        "--device",
        args.device,
        "--images",
        str(args.images),
        "--workers",
        str(args.workers),
    ]
    if args.upstream_images:
        base += ["--upstream-images", str(args.upstream_images)]

    def child(extra):
        out = subprocess.run(base + extra, capture_output=True, text=True, check=True).stdout
        return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])

    up = child(["--role", "upstream"])
    results = [child(["--role", "ours", "--batch", str(b), "--dtype", args.dtype]) for b in args.batch_sizes]
    print(f"config={args.config} device={args.device} images={args.images}")
    print(
        f"{'side':10s} {'batch':>5s} {'dtype':>5s} {'img/s':>9s} {'peak GiB':>9s} {'speed-up':>9s} {'mem ratio':>9s}"
        + ("  bf16-peak%" if args.device.startswith("cuda") else "")
    )
    print(f"{'upstream':10s} {1:5d} {'fp32':>5s} {up['img_per_s']:9.2f} {up['peak_gib']:9.2f} {1.0:9.2f} {1.0:9.2f}")
    for r in results:
        line = (
            f"{'icthp':10s} {r['batch']:5d} {r['dtype']:>5s} {r['img_per_s']:9.2f} {r['peak_gib']:9.2f} "
            f"{r['img_per_s'] / up['img_per_s']:9.2f} {r['peak_gib'] / up['peak_gib']:9.2f}"
        )
        if args.device.startswith("cuda"):
            line += f"  {100 * r['flops_per_img'] * r['img_per_s'] / (args.peak_tflops * 1e12):9.1f}"
        print(line)
    print("JSON " + json.dumps({"upstream": up, "ours": results}))


if __name__ == "__main__":
    main()
