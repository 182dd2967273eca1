"""Command line of the app: `python -m gradio_app` / `icthp app`. No Gradio import at module level."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from icthp_core.dtypes import DTYPE_CHOICES
from icthp_core.options import add_model_arguments, parse_sources
from icthp_core.scoring.registry import list_metrics, parse_metrics


def add_app_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the app's options to `parser` (shared with the `icthp app` subcommand)."""
    add_model_arguments(parser)
    g = parser.add_argument_group("app metrics")
    g.add_argument(
        "--metrics",
        default="all",
        help="comma-separated metrics offered in the UI, or 'all' (default). Models load on first use.",
    )
    g.add_argument(
        "--default-metrics",
        default=None,
        help="metrics ticked by default (default: ICT, HP, ICT-HP and the baselines given with --source)",
    )
    g.add_argument("--preload", action="store_true", help="load the default metrics' models before serving")
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
    s.add_argument("--max-images", type=int, default=16, help="max images in 'compare images' (min is 2)")
    s.add_argument("--max-upload-mb", type=int, default=20, help="max size of one uploaded file")
    s.add_argument("--max-pairs", type=int, default=500, help="max A/B pairs per comparison")
    s.add_argument("--ci", default="wilson", choices=["wilson", "bootstrap"], help="default CI for win rates")
    gen = parser.add_argument_group("generation (tab 3, needs a GPU)")
    gen.add_argument("--base-model", default=None, help="diffusers pipeline: hub id or local folder")
    gen.add_argument("--lora", default=None, help="LoRA .safetensors for the base pipeline")
    gen.add_argument("--gen-dtype", default="bf16", choices=DTYPE_CHOICES)
    return parser


def _metrics(text: str, ict: str | None, hp: str | None) -> list[str]:
    """Metrics offered: `--metrics` less those whose ICT/HP weights were switched off with 'none'."""
    ms = parse_metrics(text)
    drop = set()
    if ict is None:
        drop |= {"ict", "ict_hp"}
    if hp is None:
        drop |= {"hp", "ict_hp"}
    ms = [m for m in ms if m not in drop]
    if not ms:
        raise ValueError(
            f"no metric left to offer (check --metrics, --ict and --hp); known: {', '.join(list_metrics())}"
        )
    return ms


def default_metrics(text: str | None, offered: Sequence[str], sources: dict[str, str]) -> list[str]:
    """Metrics ticked at start: `text` if given, else ICT, HP, ICT-HP and the baselines given a source (a
    baseline without one would need a download on first use: off by default, so a first click works offline)."""
    if text:
        return [m.strip() for m in text.split(",") if m.strip()]
    wanted = ["ict", "hp", "ict_hp"] + [m for m in sources if m not in ("ict", "hp")]
    return [m for m in wanted if m in offered] or list(offered[:1])


def _sources(args: argparse.Namespace) -> dict[str, str]:
    return parse_sources(args.ict, args.hp, args.source)


def make_app(args: argparse.Namespace, factory: Any = None) -> tuple[Any, dict[str, Any]]:
    """(demo, launch kwargs) from parsed arguments; `factory` overrides the scorer factory (tests)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from . import generate
    from .app import LAUNCH_CSS, build_app
    from .controller import Controller
    from .pool import ScorerPool
    from .uploads import UploadLimits

    sources = _sources(args)
    metrics = _metrics(args.metrics, sources.get("ict"), sources.get("hp"))
    defaults = default_metrics(args.default_metrics, metrics, sources)
    pool = ScorerPool(metrics, sources, args.device, args.dtype, args.batch_size, factory=factory)
    if args.preload:
        pool.preload([m for m in defaults if m in metrics] or metrics)
    missing = generate.requirements_missing(args.base_model, args.lora)
    generator = None
    if not missing:
        generator = generate.Generator(args.base_model, args.lora, args.device or "cuda", args.gen_dtype)
    limits = UploadLimits(max_count=args.max_images, max_bytes=args.max_upload_mb * 2**20)
    for r in args.ab_root:
        if not os.path.isdir(r):
            raise ValueError(f"--ab-root {r}: not a directory")
    controller = Controller(
        pool,
        ab_roots=args.ab_root,
        limits=limits,
        max_pairs=args.max_pairs,
        ci_method=args.ci,
        generator=generator,
    )
    demo = build_app(
        controller,
        default_metrics=defaults,
        generation_note=generate.explanation(missing) if missing else None,
    )
    demo.queue(default_concurrency_limit=1, max_size=64)
    launch = {
        "server_name": args.host,
        "server_port": args.port,
        "max_file_size": f"{args.max_upload_mb}mb",
        "css": LAUNCH_CSS,
        "show_error": True,
    }
    return demo, launch


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_app_arguments(
        argparse.ArgumentParser(prog="icthp app", description="Side-by-side comparison app for ICT, HP, ICT-HP.")
    )
    args = parser.parse_args(argv)
    demo, launch = make_app(args)
    demo.launch(**launch)
    return 0
