"""`icthp serve`: run the reward server (Ray Serve) on 127.0.0.1 by default; see docs/scaling.md for the API."""

from __future__ import annotations

import argparse
import sys
import time

from icthp_cli.options import SCORE_METRICS, add_model_arguments, model_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    from icthp_core.scale.serve_config import MB, TOKEN_ENV, ServeLimits

    p.add_argument(
        "--metrics", default=SCORE_METRICS, help=f"metrics served: comma list or 'all' (default {SCORE_METRICS})"
    )
    add_model_arguments(p, workers=False)  # requests carry image bytes: no file-decoding workers
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1; 0.0.0.0 exposes it)")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--replicas", type=int, help="model replicas (default: one per GPU, else 1)")
    g.add_argument("--gpus-per-replica", type=float, help="GPUs per replica (default 1 with GPUs; 0.5 = 2 per GPU)")
    g.add_argument("--max-batch-size", type=int, default=32, help="images per model call; requests are merged (32)")
    g.add_argument("--batch-wait-ms", type=float, default=10.0, help="wait for more requests to batch (10 ms)")
    g.add_argument("--token-file", help=f"file whose first line is the bearer token (or set ${TOKEN_ENV})")
    g.add_argument("--token", help=f"bearer token (visible in `ps`: prefer --token-file or ${TOKEN_ENV})")
    g.add_argument("--open-health", action="store_true", help="answer GET /health without the token")
    g.add_argument("--address", help="Ray cluster to join (default: start a local Ray)")
    b = p.add_argument_group("budgets (bound the server's memory; docs/reliability.md)")
    d = ServeLimits()
    b.add_argument("--max-images", type=int, default=d.max_images, help=f"images per request ({d.max_images})")
    b.add_argument("--max-image-pixels", type=int, default=d.max_image_pixels, help="pixels per image (40,000,000)")
    b.add_argument("--max-request-pixels", type=int, default=d.max_request_pixels, help="per request (64,000,000)")
    b.add_argument("--max-inflight-pixels", type=int, default=d.max_inflight_pixels, help="per replica (64,000,000)")
    b.add_argument("--max-request-mb", type=float, default=d.max_request_bytes / MB, help="request body (64 MB)")
    b.add_argument("--max-inflight-mb", type=float, default=d.max_inflight_bytes / MB, help="bodies in flight (128 MB)")
    b.add_argument("--queue-timeout-s", type=float, default=d.queue_timeout_s, help="wait for budget, then 503 (2)")


def config_from_args(args: argparse.Namespace):
    """The typed `ServeConfig` of parsed options, and the warnings to print (token in argv, exposed host)."""
    from icthp_core.scale.serve_config import MB, ServeConfig, ServeLimits, exposure_warning, read_token
    from icthp_core.scoring.registry import parse_metrics

    token, warnings = read_token(args.token, args.token_file)
    limits = ServeLimits(
        max_images=args.max_images,
        max_image_pixels=args.max_image_pixels,
        max_request_pixels=args.max_request_pixels,
        max_inflight_pixels=args.max_inflight_pixels,
        max_request_bytes=int(args.max_request_mb * MB),
        max_inflight_bytes=int(args.max_inflight_mb * MB),
        queue_timeout_s=args.queue_timeout_s,
    )
    opts = model_options(args)
    config = ServeConfig(
        metrics=parse_metrics(args.metrics),
        sources=opts.sources,
        device=opts.device,
        dtype=opts.dtype,
        host=args.host,
        port=args.port,
        replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica,
        max_batch_size=args.max_batch_size,
        batch_wait_s=args.batch_wait_ms / 1000.0,
        token=token,
        open_health=args.open_health,
        address=args.address,
        limits=limits,
    ).check()
    exposed = exposure_warning(config.host, config.token)
    return config, warnings + ([exposed] if exposed else [])


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C (then exit 0); the URL on stdout once the server answers."""
    from icthp_core.scale.pipeline import init_ray

    config, warnings = config_from_args(args)
    for w in warnings:
        print(f"icthp serve: {w}", file=sys.stderr, flush=True)
    init_ray(config.address)  # before `import ray` elsewhere: a local Ray binds its services to 127.0.0.1
    from icthp_core.scale.server import start_server

    url = start_server(config).url
    print(f"icthp serve: {url}/score  (health: {url}/health, counters: {url}/metrics); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0
