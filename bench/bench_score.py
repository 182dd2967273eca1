"""Throughput benchmark: icthp_core vs an upstream-style loop, same images, same (random) weights, one command.

Upstream style (BarretBa/ICTHP eval script): two full transformers CLIPModels in fp32, CLIPProcessor per image,
one image per call, text encoded every call. Ours: `icthp_core.MultiScorer.score_files` (DataLoader decoding,
batching, cached text features, SDPA, optional bf16).

    python bench/bench_score.py --config vit-h --device cuda --dtype bf16 --batch-sizes 1 8 32 64 128 --images 512 \
        --decodes cpu gpu --compile-batches 64
    python bench/bench_score.py --config small --device cpu --images 32        # CPU-sized smoke run
    python bench/bench_score.py --config tiny --device cpu --images 8          # seconds (dry run)

Each side runs in its own subprocess (clean peak-memory numbers); the parent prints the table and ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from icthp_core.dtypes import DTYPE_CHOICES

CONFIGS = {
    "vit-h": None,  # icthp_core.checkpoints.config.VIT_H_14
    "tiny": "tiny",  # icthp_core.testing.TINY_CLIP, for dry runs
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
    from icthp_core.testing import tiny_clip_config
    from icthp_core.testing.tiny import save_tiny_clip, tiny_head

    cfg = CONFIGS[config_name] or VIT_H_14
    if cfg == "tiny":
        cfg = tiny_clip_config()
    if not (root / "ICT" / "pytorch_model.bin").exists():
        if config_name == "vit-h":  # ~1B parameters per tower: initialise fast (on the GPU if any), store in bf16
            _save_random_clip(root / "ICT", cfg, seed=0)
            _save_random_clip(root / "HP" / "hp_backbone", cfg, seed=1)
        else:
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


def vision_tower_flops(cfg: dict) -> float:
    """Analytic FLOPs (2 × multiply-adds) of one CLIP image tower at its image size: patch embedding, per layer
    QKV/out projections + MLP + attention matmuls, projection. ViT-H/14: 334.6 GFLOP (the open_clip profile).
    `torch.utils.flop_counter` misses the fused multi-head-attention op open_clip runs in inference (~35% of it)."""
    v = cfg["vision_config"]
    p, d, mlp, n_layers = v["patch_size"], v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    n_patch = (v["image_size"] // p) ** 2
    t = n_patch + 1
    macs = n_patch * 3 * p * p * d + n_layers * (t * (4 * d * d + 2 * d * mlp) + 2 * t * t * d)
    macs += d * cfg["projection_dim"]
    return 2.0 * macs


def _save_random_clip(directory: Path, cfg: dict, seed: int) -> None:
    """A randomly initialised transformers CLIPModel of `cfg`, saved in bf16 in the published layout."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from icthp_core.checkpoints.files import save_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = CLIPModel(CLIPConfig(**cfg))
    save_state_dict(
        {k: v.to(torch.bfloat16).cpu() for k, v in model.state_dict().items()}, directory / "pytorch_model.bin"
    )
    (directory / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip", **cfg}))


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
        with torch.device(device):  # initialise where it will run (the weights are then loaded over it)
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


def _model_only(scorer, batch: int, device: str, reps: int) -> float:
    """Images/s of the model part alone (both towers + heads) on preprocessed device tensors, cached text."""
    import torch

    px = {m: torch.randn(batch, 3, 224, 224, device=device) for m in scorer.preprocess_modes}
    prompts = ["a tiny dragon taking a bath in a teacup"] * batch if scorer.needs_prompt else None
    scorer.score_pixels(px, prompts)  # warm-up (and compile for this shape)
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        scorer.score_pixels(px, prompts)
    _sync(device)
    return reps * batch / (time.perf_counter() - t)


def _as_list(samples: list) -> list:
    return samples


def _host_only(scorer, items: list, batch: int, decode: str, workers: int | None, device: str) -> dict:
    """The host side alone, no model: images/s of reading the files (bytes only) and of reading + decoding +
    preprocessing onto the device (`decode` cpu: PIL in DataLoader workers; gpu: nvjpeg, in series)."""
    from icthp_core.data.batch import iter_file_batches, ordered_loader
    from icthp_core.scoring.gpu_preprocess import EncodedItems, default_workers, iter_gpu_batches

    workers = default_workers(device, decode) if workers is None else workers
    t = time.perf_counter()
    for _ in ordered_loader(EncodedItems(items), batch, workers, _as_list):
        pass
    read = len(items) / (time.perf_counter() - t)
    t = time.perf_counter()
    if decode == "gpu":
        for _ in iter_gpu_batches(items, scorer.preprocess_modes, device, batch, workers, prefetch=0):
            pass
    else:
        cuda = device.startswith("cuda")
        for b in iter_file_batches(items, scorer.preprocess_modes, batch, workers, pin_memory=cuda):
            for x in b["pixels"].values():
                x.to(device, non_blocking=True)
    _sync(device)
    return {"read_img_per_s": read, "prep_img_per_s": len(items) / (time.perf_counter() - t)}


def run_ours(root: Path, device: str, dtype: str, configs: list[dict], n: int, workers: int | None) -> list[dict]:
    """Each config {batch, decode, compile} on one loaded scorer (compiled configs last: compiling is in place)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from icthp_core import load_scorer

    scorer = load_scorer(root / "ICT", root / "HP", device=device, dtype=dtype)
    x = torch.randn(1, 3, 224, 224, device=device, dtype=scorer.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:  # both image towers (text: once per prompt)
        scorer.models["ict"].encode_image(x)
        scorer.models["hp"].encode_image(x)
    counted = fc.get_total_flops()
    flops = sum(
        vision_tower_flops(json.loads((d / "config.json").read_text()))
        for d in (root / "ICT", root / "HP" / "hp_backbone")
    )
    paths = [str(p) for p in sorted((root / "images").iterdir())[:n]]
    items = [(p, "a tiny dragon taking a bath in a teacup") for p in paths]
    out, compiled, first = [], False, None
    for cfg in sorted(configs, key=lambda c: bool(c.get("compile"))):
        batch, decode = cfg["batch"], cfg.get("decode", "cpu")
        kw = {"gpu_prefetch": 0} if decode == "gpu-serial" else {}
        decode = "gpu" if decode == "gpu-serial" else decode
        res = {"side": "ours", "batch": batch, "dtype": dtype, "decode": cfg.get("decode", "cpu")}
        res["compile"] = bool(cfg.get("compile"))
        try:
            compile_s = None
            if cfg.get("compile") and not compiled:
                t0 = time.perf_counter()
                scorer.compile()
                compiled = True
                list(scorer.score_files(items[:batch], batch_size=batch, num_workers=0, decode=decode))
                _sync(device)
                compile_s = time.perf_counter() - t0
            list(scorer.score_files(items[:batch], batch_size=batch, num_workers=0, decode=decode))  # warm-up
            _sync(device)
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            rows = list(scorer.score_files(items, batch_size=batch, num_workers=workers, decode=decode, **kw))
            _sync(device)
            dt = time.perf_counter() - t
            bad = [r for r in rows if r["error"] is not None]
            if bad:
                raise RuntimeError(f"{len(bad)} images failed, first: {bad[0]['error']}")
            scores = [r["ict_hp"] for r in rows]
            first = first if first is not None else scores  # the scores of the first config, for agreement
            res["ict_hp_max_abs_vs_first_config"] = max(abs(a - b) for a, b in zip(scores, first, strict=True))
            res.update(
                images=len(rows),
                seconds=dt,
                img_per_s=len(rows) / dt,
                peak_gib=_peak_mem(device),
                flops_per_img=flops,
                flops_per_img_counted=counted,
                compile_s=compile_s,
                model_img_per_s=_model_only(scorer, batch, device, reps=max(2, min(20, 256 // batch))),
            )
            if cfg.get("breakdown"):  # where an end-to-end gap to the model rate comes from
                res.update(_host_only(scorer, items, batch, decode, workers, device))
                res["overlap"] = res["img_per_s"] / min(res["prep_img_per_s"], res["model_img_per_s"])
        except Exception as e:  # one failing config must not hide the others
            res["error"] = f"{type(e).__name__}: {e}"[:500]
        out.append(res)
        print("ROW " + json.dumps(res), flush=True)
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=list(CONFIGS), default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=DTYPE_CHOICES)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    ap.add_argument(
        "--decodes",
        nargs="+",
        default=["cpu"],
        choices=["cpu", "gpu", "gpu-serial"],
        help="decode paths to time (gpu-serial: no overlap)",
    )
    ap.add_argument("--compile-batches", type=int, nargs="*", default=[], help="batch sizes also timed with --compile")
    ap.add_argument(
        "--breakdown",
        action="store_true",
        help="also time the host side alone (file reading; reading + decode + preprocess, no model) per config",
    )
    ap.add_argument("--json", help="write all results here")
    ap.add_argument("--no-upstream", action="store_true", help="skip the upstream-style loop")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--upstream-images", type=int, default=None, help="images for the slow loop (default: --images)")
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: sized from the core count)")
    ap.add_argument(
        "--peak-tflops", type=float, default=790.0, help="dense bf16 peak (790: 8192³ bf16 matmul measured on the H200)"
    )
    ap.add_argument("--root", default=None, help="fixture folder (default: a temp dir)")
    ap.add_argument("--role", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--configs", default=None, help=argparse.SUPPRESS)
    return ap


def _print_results(args: argparse.Namespace, up: dict | None, results: list[dict]) -> None:
    """The comparison table (upstream loop vs each configuration) and the host-side breakdown."""
    cuda = args.device.startswith("cuda")
    print(f"config={args.config} device={args.device} images={args.images}")
    head = f"{'side':8s} {'batch':>5s} {'dtype':>5s} {'decode':>6s} {'compile':>7s} {'img/s':>9s} {'model img/s':>11s}"
    head += f" {'peak GiB':>9s} {'speed-up':>9s} {'mem ratio':>9s}" + (
        "  end-to-end %peak  model %peak" if cuda else ""
    )
    print(head)
    if up:
        print(
            f"{'upstream':8s} {1:5d} {'fp32':>5s} {'pil':>6s} {'no':>7s} {up['img_per_s']:9.2f} {'':>11s} "
            f"{up['peak_gib']:9.2f} {1.0:9.2f} {1.0:9.2f}"
        )
    up_ips, up_gib = (up["img_per_s"], up["peak_gib"]) if up else (float("nan"), float("nan"))
    for r in results:
        if "error" in r:
            print(
                f"{'icthp':8s} {r['batch']:5d} {r['dtype']:>5s} {r['decode']:>6s} {str(r['compile']):>7s} {r['error']}"
            )
            continue
        line = (
            f"{'icthp':8s} {r['batch']:5d} {r['dtype']:>5s} {r['decode']:>6s} {str(r['compile']):>7s} "
            f"{r['img_per_s']:9.2f} {r['model_img_per_s']:11.2f} {r['peak_gib']:9.2f} "
            f"{r['img_per_s'] / up_ips:9.2f} {r['peak_gib'] / up_gib:9.2f}"
        )
        if cuda:
            tf = r["flops_per_img"] / (args.peak_tflops * 1e12)
            line += f"  {100 * tf * r['img_per_s']:16.1f}  {100 * tf * r['model_img_per_s']:11.1f}"
        print(line)
    rows = [r for r in results if "prep_img_per_s" in r]
    if rows:
        print("host side alone (no model) and how well it overlaps the model (end-to-end / min(host, model)):")
        print(f"{'batch':>5s} {'decode':>10s} {'read img/s':>10s} {'decode+prep img/s':>17s} {'overlap':>7s}")
        for r in rows:
            print(
                f"{r['batch']:5d} {r['decode']:>10s} {r['read_img_per_s']:10.1f} {r['prep_img_per_s']:17.1f} "
                f"{r['overlap']:7.2f}"
            )


def main() -> None:
    args = _parser().parse_args()
    if args.role:
        root = Path(args.root)
        if args.role == "upstream":
            res = run_upstream(root, args.device, args.upstream_images or args.images)
        else:
            res = run_ours(root, args.device, args.dtype, json.loads(args.configs), args.images, args.workers)
        print("RESULT " + json.dumps(res))
        return
    root = Path(args.root or tempfile.mkdtemp(prefix="icthp_bench_"))
    make_fixture(root, args.config, args.images)
    base = [sys.executable, __file__, "--root", str(root), "--device", args.device, "--images", str(args.images)]
    if args.workers is not None:
        base += ["--workers", str(args.workers)]
    if args.upstream_images:
        base += ["--upstream-images", str(args.upstream_images)]

    def child(extra):
        proc = subprocess.run(base + extra, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"child {extra[:2]} failed (rc {proc.returncode}): {proc.stderr[-2000:]}")
        return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])

    configs = [{"batch": b, "decode": d, "breakdown": args.breakdown} for d in args.decodes for b in args.batch_sizes]
    configs += [{"batch": b, "decode": args.decodes[-1], "compile": True} for b in args.compile_batches]
    up = None if args.no_upstream else child(["--role", "upstream"])
    results = child(["--role", "ours", "--dtype", args.dtype, "--configs", json.dumps(configs)])
    _print_results(args, up, results)
    summary = {"config": args.config, "device": args.device, "images": args.images, "upstream": up, "ours": results}
    summary["peak_tflops"] = args.peak_tflops
    print("JSON " + json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
