"""`icthp serve`: run the reward server (Ray Serve) on 127.0.0.1 by default; see docs/scaling.md for the API."""

from __future__ import annotations

import argparse
import os
import time

from icthp_cli.options import SCORE_METRICS, add_model_arguments, model_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--metrics", default=SCORE_METRICS, help=f"metrics served: comma list or 'all' (default {SCORE_METRICS})"
    )
    add_model_arguments(p, workers=False)  # requests carry image bytes: no file-decoding workers
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


def config(args: argparse.Namespace):
    """The core's `ServeConfig` of the parsed `args`."""
    from icthp_core.scale.serve import ServeConfig
    from icthp_core.scoring.registry import parse_metrics

    opts = model_options(args)
    cfg = ServeConfig(
        metrics=parse_metrics(args.metrics),
        sources=opts.sources,
        device=opts.device,
        dtype=opts.dtype,
        **{k: getattr(args, k) for k in ("host", "port", "replicas", "gpus_per_replica", "max_batch_size")},
        **{k: getattr(args, k) for k in ("batch_wait_ms", "max_images", "max_request_mb", "token", "address")},
    )
    cfg.check()
    return cfg


def run(args: argparse.Namespace) -> int:
    from icthp_core.scale.serve import start_server, stop_server

    url = start_server(config(args))
    print(f"icthp serve: {url}/score  (health: {url}/health, counters: {url}/metrics); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        stop_server()
    return 0
