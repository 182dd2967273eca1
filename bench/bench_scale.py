"""Scale-out benchmark, one command: (1) `--engine ray` vs the single-process engine on the same images;
(2) the reward server with dynamic batching (C concurrent one-image clients) vs one-image requests sent one after
another. Random-weight models in the published layout (tiny by default; `--config small` = ViT-B/16-sized towers).

    python bench/bench_scale.py --images 256 --actors 2                      # this CPU
    python bench/bench_scale.py --config vit-h --images 20000 --actors 8 --device cuda --requests 2000 --clients 64
                                                                             # a multi-GPU machine (one actor/GPU)

Ray starts locally (127.0.0.1, no dashboard); its start-up and the actors' model loading are reported separately
from the steady-state images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def fixture(root: Path, config: str, n: int) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Models (tiny, or bench_score's configs) and n JPEGs of mixed sizes with 8 distinct prompts."""
    import numpy as np
    from PIL import Image

    if config == "tiny":
        from icthp_core.testing.tiny import save_tiny_hp, save_tiny_ict

        save_tiny_ict(root / "ICT")
        save_tiny_hp(root / "HP")
        img_dir = root / "images"
        img_dir.mkdir()
        rng = np.random.default_rng(0)
        sizes = [(512, 512), (768, 512), (384, 640)]
        for i in range(n):
            w, h = sizes[i % 3]
            small = rng.integers(0, 256, (h // 32, w // 32, 3), dtype=np.uint8)
            Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(img_dir / f"{i:05d}.jpg")
    else:
        from bench_score import make_fixture

        make_fixture(root, config, n)
        img_dir = root / "images"
    files = sorted(str(p) for p in img_dir.glob("*.jpg"))[:n]
    return {"ict": str(root / "ICT"), "hp": str(root / "HP")}, [(f, f"prompt {i % 8}") for i, f in enumerate(files)]


def bench_engines(args, sources, items, root: Path) -> dict:
    import ray

    from icthp_core.data.parquet_out import ShardDir
    from icthp_core.data.sinks import FolderSink
    from icthp_core.data.sources import plan_files
    from icthp_core.scale.pipeline import LocalRun, init_ray, run_local, run_ray
    from icthp_core.scoring.scorer import MultiScorer

    metrics = ["ict", "hp", "ict_hp"]
    shards = plan_files(items, args.shard_size)
    t = time.perf_counter()
    scorer = MultiScorer(metrics, sources, device=args.device)
    load_s = time.perf_counter() - t

    def sink(name: str) -> FolderSink:
        return FolderSink(ShardDir(root / name, name, len(shards), metrics), metrics, [])

    run = LocalRun(scorer, args.batch_size, args.workers, "cpu", progress=False)
    local = run_local(shards, range(len(shards)), run, sink("local"))
    t = time.perf_counter()
    init_ray(num_cpus=args.ray_cpus)
    init_s = time.perf_counter() - t
    cold = run_ray(shards, metrics, sources, sink("ray1"), args.device,
                   batch_size=args.batch_size, actors=args.actors, progress=False)  # fmt: skip
    warm = run_ray(shards, metrics, sources, sink("ray2"), args.device,
                   batch_size=args.batch_size, actors=args.actors, progress=False)  # fmt: skip
    del ray
    return {
        "images": len(items),
        "local_model_load_s": round(load_s, 2),
        "local_images_per_s": round(local.rows / local.wall_seconds, 2),
        "ray_init_s": round(init_s, 2),
        "ray_first_run_images_per_s": round(cold.rows / cold.wall_seconds, 2),
        "ray_second_run_images_per_s": round(warm.rows / warm.wall_seconds, 2),
        "ray_stage_lines": warm.lines(),
        "local_stage_lines": local.lines(),
    }


def bench_server(args, sources, items) -> dict:
    import numpy as np
    from PIL import Image
    from ray import serve

    from icthp_core import RewardClient
    from icthp_core.scale.protocol import parse_metrics_text
    from icthp_core.scale.serve_config import ServeConfig, ServeLimits
    from icthp_core.scale.server import start_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server(
        ServeConfig(
            ["ict", "hp", "ict_hp"],
            sources,
            device=args.device,
            port=port,
            replicas=args.replicas,
            gpus_per_replica=1.0 if args.device == "cuda" else 0.0,
            max_batch_size=args.max_batch_size,
            batch_wait_s=args.batch_wait_ms / 1000,
            limits=ServeLimits(max_images=512),
        )
    )
    url = server.url
    arrays = [np.asarray(Image.open(p).convert("RGB").resize((512, 512))) for p, _ in items[: args.requests]]
    prompts = [q for _, q in items[: args.requests]]
    client = RewardClient(url, timeout=600)
    client(arrays[0], prompts[0])  # warm-up
    out = {}
    t = time.perf_counter()
    for a, q in zip(arrays, prompts, strict=True):
        client(a, q)
    seq = time.perf_counter() - t
    out["sequential_requests_per_s"] = round(len(arrays) / seq, 2)

    def one(i):
        return client(arrays[i], prompts[i])

    before = parse_metrics_text(client.session.get(f"{url}/metrics").text)
    t = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        list(pool.map(one, range(len(arrays))))
    conc = time.perf_counter() - t
    after = parse_metrics_text(client.session.get(f"{url}/metrics").text)
    batches = after["icthp_batches_total"] - before["icthp_batches_total"]
    out["batched_requests_per_s"] = round(len(arrays) / conc, 2)
    out["batched_images_per_s"] = out["batched_requests_per_s"]  # one image per request
    out["mean_batch_size"] = round(
        (after["icthp_batch_images_total"] - before["icthp_batch_images_total"]) / batches, 2
    )
    out["speedup"] = round(seq / conc, 2)
    server.stop()
    serve.delete("icthp")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="tiny", choices=["tiny", "small", "vit-h"])
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--shard-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=1, help="decode processes of the local engine")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--ray-cpus", type=int, default=None)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=10)
    p.add_argument("--skip-engines", action="store_true")
    p.add_argument("--skip-server", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources, items = fixture(root, args.config, args.images)
        result = {"config": args.config, "device": args.device, "load_avg_start": os.getloadavg()[0]}
        if not args.skip_engines:
            result["engines"] = bench_engines(args, sources, items, root)
        if not args.skip_server:
            from icthp_core.scale.pipeline import init_ray

            init_ray(num_cpus=args.ray_cpus)
            result["server"] = bench_server(args, sources, items)
        result["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
