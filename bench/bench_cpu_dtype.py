"""CPU: image-tower throughput in fp32 vs bf16 (optionally torch.compile, dynamic int8), with the CPU's bf16 support.

    python bench/bench_cpu_dtype.py --config small --batch 8 --reps 3 [--compile] [--int8]

Times the `small` (ViT-B/16-sized) CLIP image tower of bench_score.py on random weights, inference mode, the two
dtypes interleaved so that load changes hit both; prints the median seconds per batch and the bf16/fp32 ratio.
Whether bf16 pays depends on native support (AVX512-BF16 / AMX, see `icthp_core.scoring.cpu.cpu_features`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> dict:
    from bench_score import CONFIGS

    from icthp_core.checkpoints.loading import build_clip
    from icthp_core.scoring.cpu import cpu_features

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small", choices=["small", "tiny"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd fp32 (compile time reported)")
    ap.add_argument(
        "--int8",
        action="store_true",
        help="also time dynamic int8 quantisation of the Linear layers (torch.ao quantize_dynamic, fbgemm)",
    )
    a = ap.parse_args(argv)
    from icthp_core.testing import tiny_clip_config

    cfg = tiny_clip_config() if a.config == "tiny" else CONFIGS["small"]
    towers = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m = build_clip(cfg, vision_only=True).to_empty(device="cpu")
        torch.manual_seed(0)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.02)
        towers[name] = m.to(dt).eval()
    if a.int8:  # weights int8, activations quantised per batch; a speed probe, not an offered scoring mode
        import warnings

        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao quantisation is deprecated in favour of torchao
            towers["int8_dynamic"] = quantize_dynamic(towers["fp32"], {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(a.batch, 3, 224, 224)
    res: dict = {"cpu": cpu_features(), "threads": torch.get_num_threads(), "batch": a.batch, "config": a.config}
    if a.compile:
        t = time.perf_counter()
        towers["fp32_compiled"] = torch.compile(towers["fp32"])
        with torch.inference_mode():
            towers["fp32_compiled"](x)
        res["compile_s"] = round(time.perf_counter() - t, 1)
    times: dict[str, list[float]] = {k: [] for k in towers}
    with torch.inference_mode():
        for m in towers.values():  # warm-up
            m(x.to(next(m.parameters()).dtype))
        for _ in range(a.reps):
            for k, m in towers.items():
                xi = x.to(next(m.parameters()).dtype)
                t = time.perf_counter()
                m(xi)
                times[k].append(time.perf_counter() - t)
    res["seconds_per_batch"] = {k: round(statistics.median(v), 3) for k, v in times.items()}
    res["img_per_s"] = {k: round(a.batch / statistics.median(v), 2) for k, v in times.items()}
    res["bf16_speedup"] = round(statistics.median(times["fp32"]) / statistics.median(times["bf16"]), 2)
    if "int8_dynamic" in times:
        res["int8_speedup"] = round(statistics.median(times["fp32"]) / statistics.median(times["int8_dynamic"]), 2)
    print(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
