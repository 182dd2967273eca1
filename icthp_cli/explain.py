"""`icthp explain`: why each image scores as it does — word contributions of the prompt and region heatmaps.

Writes, per image, PNG overlays (<name>.<metric>.<method>.png), word bars and <name>.json into --output.
Cost per image: one batched text pass for the words (+ integrated gradients), one forward+backward for relevance,
grid^2 + 1 image passes for occlusion (7 x 7 by default on the CPU, 14 x 14 on a GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from icthp_cli.options import add_model_arguments, model_options
from icthp_core.errors import ConfigError, ICTHPError
from icthp_core.explain.methods import METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", help="image files and/or folders (folders: their image files)")
    parser.add_argument("--prompt", help="the prompt of the images (needed by every prompt-conditioned metric)")
    parser.add_argument("--metrics", default="ict,hp,ict_hp", help="comma-separated metrics (default ict,hp,ict_hp)")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)} (default all)"
    )
    parser.add_argument("--grid", type=int, default=None, help="occlusion grid side (default 7 on CPU, 14 on GPU)")
    parser.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps (0: removal only)")
    parser.add_argument("--no-progress", action="store_true")
    add_model_arguments(parser, output_help="folder for the overlays and JSON files (created)")


def _check(args: argparse.Namespace) -> tuple[list[str], list[str], object]:
    """Metrics, methods and model options, with one-line errors for bad values (before any model loads)."""
    from icthp_core.explain.methods import parse_methods
    from icthp_core.scoring.registry import parse_metrics

    try:
        metrics, opts = parse_metrics(args.metrics), model_options(args)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not args.output:
        raise ConfigError("--output/-o: give the folder for the overlays and JSON files")
    if args.grid is not None and not 1 <= args.grid <= 64:
        raise ConfigError(f"--grid {args.grid}: must be between 1 and 64")
    if args.ig_steps < 0:
        raise ConfigError(f"--ig-steps {args.ig_steps}: must be >= 0")
    if args.prompt is not None and not args.prompt.strip():
        raise ConfigError("--prompt is empty")
    return metrics, parse_methods(args.methods), opts


def _stems(paths: list[str]) -> list[str]:
    """Output names: the file stem, with a counter where two images share one."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = Path(p).stem
        seen[stem] = seen.get(stem, 0) + 1
        out.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return out


def run(args: argparse.Namespace) -> int:
    from icthp_core.scoring.registry import METRICS

    metrics, methods, opts = _check(args)  # the options are checked before torch and the models load
    if args.prompt is None and any(METRICS[m].needs_prompt or METRICS[m].derived for m in metrics):
        needs = [m for m in metrics if METRICS[m].needs_prompt or METRICS[m].derived]
        raise ConfigError(f"--prompt: metrics {', '.join(needs)} need a prompt")
    from tqdm import tqdm

    from icthp_core.data.images import expand_paths, load_image
    from icthp_core.explain.api import explain
    from icthp_core.explain.outputs import save_explanation
    from icthp_core.explain.regions import default_grid
    from icthp_core.scoring.scorer import MultiScorer

    paths = expand_paths(args.images)
    if not paths:
        raise ConfigError("no images given (the folders hold no image files)")
    out = Path(args.output)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--output {out}: cannot be created ({e.strerror})") from None
    scorer = MultiScorer(metrics, opts.sources, device=opts.device, dtype=opts.dtype)
    grid = args.grid or default_grid(scorer.device)
    print(f"explaining on {scorer.device}: {', '.join(methods)}; occlusion grid {grid}x{grid}", file=sys.stderr)
    errors: list[ICTHPError] = []
    bar = tqdm(total=len(paths), unit="image", disable=args.no_progress, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.set_postfix_str(f"occlusion {done}/{total}")

    for path, stem in zip(paths, _stems(paths), strict=True):
        try:
            image = load_image(path)
            ex = explain(scorer, image, args.prompt, metrics, methods, grid, args.ig_steps, opts.batch_size, progress)
            written = save_explanation(ex, out, stem, source=path)
        except ICTHPError as e:
            errors.append(e)
            if len(errors) < len(paths):  # the last error of an all-failed run is raised (one line, exit 2)
                bar.write(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        else:
            bar.write(f"{path}: " + ", ".join(f"{m}={v:.4f}" for m, v in ex.scores.items()) + f" -> {written}")
        bar.update(1)
    bar.close()
    if len(errors) == len(paths):
        raise errors[-1]
    if errors:
        print(f"{len(errors)} of {len(paths)} images could not be explained (see errors above)", file=sys.stderr)
    return 0
