"""`icthp app`: the Gradio comparison app (ICT, HP, ICT-HP and baselines side by side); see docs/app.md."""

from __future__ import annotations

import argparse

from icthp_cli.options import APP_METRICS, add_model_arguments, model_options
from icthp_core.dtypes import DTYPE_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # the app scores uploads in its own process: no --workers
    add_model_arguments(parser, workers=False)
    g = parser.add_argument_group("app metrics")
    g.add_argument(
        "--metrics",
        default=APP_METRICS,
        help=f"comma-separated metrics offered in the UI, or 'all' (default {APP_METRICS}); a model not ticked by "
        "default loads on first use",
    )
    g.add_argument(
        "--default-metrics",
        default=None,
        help="metrics ticked by default (default: ICT, HP, ICT-HP and the baselines given with --source)",
    )
    load = g.add_mutually_exclusive_group()
    load.add_argument("--preload", action="store_true", help="load the default metrics' models before serving")
    load.add_argument(
        "--lazy",
        action="store_true",
        help="load each model only when a comparison first needs it (default: the default metrics' models load in "
        "the background as the server starts)",
    )
    s = parser.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument(
        "--ab-root",
        action="append",
        default=[],
        metavar="DIR",
        help="allow A/B folders under DIR (repeatable); without it only uploads are accepted",
    )
    s.add_argument("--max-images", type=int, default=16, help="max images in 'compare images' (>= 2; 16)")
    s.add_argument("--max-upload-mb", type=int, default=20, help="max size of one uploaded file (20)")
    s.add_argument("--max-pairs", type=int, default=500, help="max A/B pairs per comparison (500)")
    s.add_argument("--ci", default="wilson", choices=["wilson", "bootstrap"], help="default CI for win rates")
    gen = parser.add_argument_group("generation (tab 3, needs a GPU)")
    gen.add_argument("--base-model", default=None, help="diffusers pipeline: hub id or local folder")
    gen.add_argument("--lora", default=None, help="LoRA .safetensors for the base pipeline")
    gen.add_argument("--gen-dtype", default="bf16", choices=DTYPE_CHOICES)


def config(args: argparse.Namespace):
    """The app's typed `AppConfig` of the parsed `args` (checked: one line naming a bad option)."""
    from icthp_app import AppConfig

    from icthp_core.scoring.registry import parse_metrics

    opts = model_options(args)
    cfg = AppConfig(
        metrics=parse_metrics(args.metrics),
        sources=opts.sources,
        default_metrics=[m.strip() for m in (args.default_metrics or "").split(",") if m.strip()] or None,
        preload=args.preload,
        warm=not args.lazy,
        device=opts.device,
        dtype=opts.dtype,
        batch_size=opts.batch_size,
        ab_roots=list(args.ab_root),
        **{k: getattr(args, k) for k in ("host", "port", "max_images", "max_upload_mb", "max_pairs", "ci")},
        **{k: getattr(args, k) for k in ("base_model", "lora", "gen_dtype")},
    )
    cfg.check()
    return cfg


def run(args: argparse.Namespace) -> int:
    from icthp_app import launch_app

    launch_app(config(args))
    return 0
