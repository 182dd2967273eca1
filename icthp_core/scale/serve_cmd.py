"""`icthp serve`: run the reward server (Ray Serve) on 127.0.0.1 by default; see docs/scaling.md for the API."""

from __future__ import annotations

import argparse
import os
import time

from icthp_core.options import add_model_arguments, model_options
from icthp_core.scoring.registry import parse_metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="icthp serve", description=__doc__)
    p.add_argument("--metrics", default="ict,hp,ict_hp", help="metrics served (default ict,hp,ict_hp)")
    add_model_arguments(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1; 0.0.0.0 exposes it)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--replicas", type=int, help="model replicas (default: one per GPU, else 1)")
    g.add_argument("--gpus-per-replica", type=float, help="GPUs per replica (default 1 with GPUs; 0.5 = 2 per GPU)")
    g.add_argument("--max-batch-size", type=int, default=32, help="images+requests batched per model call (32)")
    g.add_argument("--batch-wait-ms", type=float, default=10.0, help="wait for more requests to batch (10 ms)")
    g.add_argument("--max-images", type=int, default=256, help="images per request (256)")
    g.add_argument("--max-request-mb", type=float, default=64.0, help="request body limit (64 MB)")
    g.add_argument("--token", default=os.environ.get("ICTHP_SERVE_TOKEN"), help="require 'Authorization: Bearer T'")
    g.add_argument("--address", help="Ray cluster to join (default: start a local Ray)")
    return p


def start(args: argparse.Namespace) -> str:
    """Start the server described by parsed `args`; returns its base URL (Ray stays up in this process)."""
    from icthp_core.scale.pipeline import init_ray

    metrics = parse_metrics(args.metrics)
    opts = model_options(args)
    if args.max_batch_size < 1 or args.max_images < 1:
        raise ValueError("--max-batch-size and --max-images must be >= 1")
    init_ray(args.address)
    import ray
    from ray import serve

    from icthp_core.scale.server import build_app

    gpus = int(ray.cluster_resources().get("GPU", 0))
    gpr = args.gpus_per_replica if args.gpus_per_replica is not None else (1.0 if gpus else 0.0)
    replicas = args.replicas or (max(int(gpus / gpr), 1) if gpr else 1)
    serve.start(http_options={"host": args.host, "port": args.port})
    app = build_app(
        metrics,
        opts.sources,
        device=opts.device or ("cuda" if gpr else "cpu"),
        dtype=opts.dtype,
        replicas=replicas,
        gpus_per_replica=gpr,
        cpus_per_replica=0.0 if gpr else 0.5,
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1000.0,
        token=args.token,
        max_images=args.max_images,
        max_request_bytes=int(args.max_request_mb * (1 << 20)),
    )
    serve.run(app, name="icthp", route_prefix="/")
    return f"http://{args.host}:{args.port}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    url = start(args)
    print(f"icthp serve: {url}/score  (health: {url}/health, counters: {url}/metrics); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0
