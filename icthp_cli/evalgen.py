"""`icthp evalgen`: generate a prompt set with a diffusers pipeline (base and each LoRA from the same noise), score
every image (JPEG kB, aesthetic, ICT, HP, ICT-HP, baselines) and write a Table-2-style report. See docs/evalgen.md."""

from __future__ import annotations

import argparse

from icthp_cli.options import add_model_arguments, add_output_argument, model_options
from icthp_core.dtypes import DTYPE_CHOICES
from icthp_core.errors import ConfigError


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("--model", required=True, help="diffusers pipeline (SD3/SD3.5/FLUX.1): hub id or local folder")
    g.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="[NAME=]PATH[@SCALE]",
        help="a LoRA to compare with the base (file, folder or hub id; repeatable)",
    )
    g.add_argument("--lora-scale", type=float, default=1.0, help="default LoRA scale (1.0)")
    g.add_argument("--prompts", required=True, help="PartiPrompts.tsv, GenEval evaluation_metadata.jsonl, .txt, ...")
    g.add_argument("--prompt-column", help="column/field holding the prompt (default: Prompt/prompt/caption/text)")
    g.add_argument("--limit", type=int, help="only the first N prompts")
    g.add_argument("--seeds-per-prompt", type=int, default=1, help="images per prompt and model (1)")
    g.add_argument("--seed", type=int, default=0, help="image (i, n) uses seed + i * seeds_per_prompt + n (0)")
    g.add_argument("--steps", type=int, help="sampling steps (default 8 SD3, 4 FLUX-schnell, 28 FLUX-dev)")
    g.add_argument("--guidance", type=float, help="guidance scale (default 0; 3.5 for FLUX-dev)")
    g.add_argument("--size", type=int, default=1024, help="height and width in pixels (1024)")
    g.add_argument("--height", type=int, help="height (overrides --size)")
    g.add_argument("--width", type=int, help="width (overrides --size)")
    g.add_argument("--max-sequence-length", type=int, help="T5 tokens (pipeline default; 256 for FLUX-schnell)")
    g.add_argument("--gen-batch-size", type=int, default=4, help="images per pipeline call (4)")
    g.add_argument("--gen-dtype", choices=DTYPE_CHOICES, help="pipeline dtype (bf16 on CUDA, else fp32)")
    g.add_argument("--cpu-offload", action="store_true", help="diffusers model CPU offload (small GPUs)")
    p.add_argument(
        "--metrics",
        default=None,
        help="metrics besides JPEG kB: comma list, 'all', or 'none' (default ict,hp,ict_hp; add aesthetic for Table 2)",
    )
    add_model_arguments(p)
    add_output_argument(p, "output folder (images, scores, report); a rerun resumes", required=True)
    p.add_argument("--grid-prompts", type=int, default=8, help="image grids for the first N prompts (8)")
    p.add_argument("--overwrite", action="store_true", help="delete this folder's images and scores first")
    p.add_argument("--no-progress", action="store_true")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{name} {value}: must be >= 1")


def config_from_args(args: argparse.Namespace):
    """The core's `EvalGenConfig` of the parsed `args`."""
    from icthp_core.diffusion.evalgen import DEFAULT_METRICS, EvalGenConfig
    from icthp_core.diffusion.generation import parse_lora
    from icthp_core.scoring.registry import parse_metrics

    opts = model_options(args)
    for name in ("limit", "seeds_per_prompt", "steps", "size", "height", "width", "gen_batch_size"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    text = args.metrics if args.metrics is not None else ",".join(DEFAULT_METRICS)
    metrics = [] if text.strip().lower() == "none" else parse_metrics(text)
    return EvalGenConfig(
        model=args.model,
        prompts=args.prompts,
        outdir=args.output,
        loras=[parse_lora(x, args.lora_scale) for x in args.lora],
        prompt_column=args.prompt_column,
        limit=args.limit,
        seeds_per_prompt=args.seeds_per_prompt,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        height=args.height or args.size,
        width=args.width or args.size,
        max_sequence_length=args.max_sequence_length,
        gen_batch_size=args.gen_batch_size,
        gen_dtype=args.gen_dtype,
        cpu_offload=args.cpu_offload,
        metrics=metrics,
        sources=opts.sources,
        score_device=opts.device,
        score_dtype=opts.dtype,
        score_batch_size=opts.batch_size,
        workers=opts.workers,
        grid_prompts=args.grid_prompts,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    from icthp_core.diffusion.evalgen import run_evalgen

    paths = run_evalgen(config_from_args(args))
    if paths:
        print(paths["summary_md"].read_text(encoding="utf-8"))
        print(f"report: {paths['summary_md']} (per-image rows: {paths['per_image_csv']}, images: {args.output}/images)")
    return 0
