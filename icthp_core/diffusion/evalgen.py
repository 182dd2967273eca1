"""`icthp evalgen`: evaluate what a (fine-tuned) generator makes, as in the paper's Table 2 (JPEG compressibility and
aesthetic score on Parti-Prompts) and Table 3 (GenEval), plus ICT, HP, ICT-HP and any registry baseline.

    icthp evalgen --model stabilityai/stable-diffusion-3.5-large-turbo --lora ict_hp=out/sd35-icthp \\
        --prompts PartiPrompts.tsv -o eval/parti
    accelerate launch --num_processes 8 -m icthp_cli evalgen ...   # prompts split over 8 GPUs, one result

Steps: (1) generate the missing images of the base model and of each LoRA (`generation.py`), (2) score the images
not yet scored (`scores/part-<rank>.jsonl`), (3) write the report (`gen_report.py`). Every step resumes.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from icthp_core.diffusion.generation import (
    BASE,
    GenerationSettings,
    ImageItem,
    ModelSpec,
    generate_images,
    image_path,
    missing_items,
    plan_items,
    shard_batches,
    write_metadata,
)
from icthp_core.dtypes import DTYPE_CHOICES, parse_dtype
from icthp_core.errors import ConfigError, DataError
from icthp_core.evaluation.gen_report import JPEG, read_score_rows, write_report
from icthp_core.evaluation.image_stats import jpeg_size_kb
from icthp_core.evaluation.prompt_sets import load_prompt_set

__all__ = ["EvalGenConfig", "run_evalgen", "score_images", "unscored", "default_steps_guidance"]

DEFAULT_METRICS = ("ict", "hp", "ict_hp")  # aesthetic (paper Table 2) downloads a baseline: ask for it


@dataclass
class EvalGenConfig:
    model: str  # diffusers pipeline: hub id or local folder (SD3 / SD3.5 / FLUX.1)
    prompts: str  # PartiPrompts.tsv, GenEval evaluation_metadata.jsonl, .txt, .jsonl, .csv, .parquet
    outdir: str
    loras: list[ModelSpec] = field(default_factory=list)
    prompt_column: str | None = None
    limit: int | None = None  # first N prompts
    seeds_per_prompt: int = 1
    seed: int = 0
    steps: int | None = None  # default: 8 (SD3), 4 (FLUX), as DRaFT trains
    guidance: float | None = None  # default: 0 (SD3.5-Turbo, FLUX-schnell), 3.5 for guidance-distilled FLUX-dev
    height: int = 1024
    width: int = 1024
    max_sequence_length: int | None = None  # T5 tokens; default: the pipeline's (256 for FLUX-schnell, as DRaFT)
    gen_batch_size: int = 4
    gen_dtype: str | None = None  # fp32 | fp16 | bf16; default bf16 on CUDA, else fp32
    cpu_offload: bool = False
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    sources: dict[str, str] = field(default_factory=dict)
    score_device: str | None = None
    score_dtype: str = "fp32"
    score_batch_size: int = 32
    workers: int = 2
    grid_prompts: int = 8
    overwrite: bool = False
    progress: bool = True


def default_steps_guidance(arch: str, guidance_embeds: bool) -> tuple[int, float]:
    from icthp_core.diffusion.pipelines import ARCH_DEFAULTS

    if arch == "flux" and guidance_embeds:
        return 28, 3.5  # FLUX.1-dev
    return ARCH_DEFAULTS[arch]["num_steps"], 0.0


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPE_CHOICES:
        raise ConfigError(f"--gen-dtype {name!r}: choose one of {', '.join(DTYPE_CHOICES)}")
    return parse_dtype(name, "--gen-dtype")


def _check_run(out: Path, record: dict, overwrite: bool) -> None:
    """Store what decides the pixels in `evalgen.json`; a resumed run must match it (or pass --overwrite)."""
    f = out / "evalgen.json"
    if f.is_file() and not overwrite:
        old = json.loads(f.read_text())
        diff = [k for k in record if k not in ("loras", "prompts") and old.get(k) != record[k]]
        diff += [f"lora {n}" for n, v in record["loras"].items() if n in old.get("loras", {}) and old["loras"][n] != v]
        if diff:
            raise ConfigError(
                f"{f}: this folder holds a run with other settings ({', '.join(diff)}); "
                "use another --output or pass --overwrite"
            )
        record = {**record, "loras": {**old.get("loras", {}), **record["loras"]}}
    elif overwrite:
        for d in ("images", "scores", "grids"):
            shutil.rmtree(out / d, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps(record, indent=2))


def _complete(row: dict | None, metrics: list[str]) -> bool:
    return row is not None and row.get("error") is None and all(row.get(m) is not None for m in [JPEG, *metrics])


def unscored(outdir: str | Path, models: list[str], items: list[ImageItem], metrics: list[str]):
    """(model, item) pairs whose score row is missing, failed, lacks one of `metrics`, or is older than the image
    file (an image generated again after a row was written), in canonical order."""
    out = Path(outdir)
    done = {(r["model"], r["index"], r["n"]): r for r in read_score_rows(out / "scores")}
    todo = []
    for m in models:
        for it in items:
            row = done.get((m, it.index, it.n))
            path = image_path(out / "images", m, it.index, it.n)
            if not _complete(row, metrics) or row.get("image_mtime_ns") != path.stat().st_mtime_ns:
                todo.append((m, it))
    return todo


def score_images(
    outdir: str | Path,
    todo: list[tuple[str, ImageItem]],
    metrics: list[str],
    make_scorer,
    rank: int = 0,
    world: int = 1,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = False,
) -> int:
    """Score this process's share (every `world`-th from `rank`) of `todo` (from `unscored`, listed by every
    process before any scores); appends rows to `scores/part-<rank>.jsonl` as it goes. `make_scorer()` builds
    the MultiScorer (only when there is work)."""
    out = Path(outdir)
    mine = todo[rank::world]
    if not mine:
        return 0
    (out / "scores").mkdir(parents=True, exist_ok=True)
    paths = [image_path(out / "images", m, it.index, it.n) for m, it in mine]
    scorer = make_scorer() if metrics else None
    if scorer is not None:
        pairs = [(str(p), it.prompt) for p, (_, it) in zip(paths, mine, strict=True)]
        scored = scorer.score_files(pairs, batch_size, workers, progress=progress, total=len(pairs))
    else:
        scored = ({"error": None} for _ in mine)
    n = 0
    with open(out / "scores" / f"part-{rank:03d}.jsonl", "a", encoding="utf-8") as fh:
        for (model, it), path, srow in zip(mine, paths, scored, strict=True):
            row = {"model": model, "index": it.index, "n": it.n, "seed": it.seed, "prompt": it.prompt}
            row["image"] = str(path.relative_to(out))
            row["image_mtime_ns"] = path.stat().st_mtime_ns
            row["error"] = srow.get("error")
            if row["error"] is None:
                row[JPEG] = jpeg_size_kb(path)
                row.update({m: srow[m] for m in metrics})
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            n += 1
    return n


def _settings(cfg: EvalGenConfig, arch: str, guidance_embeds: bool, gen_dtype: str) -> GenerationSettings:
    """What decides the pixels: the config with the architecture's defaults filled in."""
    steps, guidance = default_steps_guidance(arch, guidance_embeds)
    return GenerationSettings(
        model=cfg.model,
        steps=cfg.steps or steps,
        guidance=guidance if cfg.guidance is None else cfg.guidance,
        height=cfg.height,
        width=cfg.width,
        seed=cfg.seed,
        seeds_per_prompt=cfg.seeds_per_prompt,
        max_sequence_length=cfg.max_sequence_length or (256 if arch == "flux" and not guidance_embeds else None),
        dtype=gen_dtype,
    )


def _setup_run(cfg: EvalGenConfig, settings: GenerationSettings, records: list, models: list[ModelSpec]) -> None:
    """Main process: check or record the run's settings in `evalgen.json`, write each model's metadata."""
    prompts_sha = hashlib.sha256(json.dumps([r.metadata for r in records], sort_keys=True).encode()).hexdigest()
    record = {
        **settings.as_dict(),
        "prompts": str(cfg.prompts),
        "prompts_sha256": prompts_sha,
        "loras": {s.name: {"path": s.lora, "scale": s.scale} for s in cfg.loras},
    }
    out = Path(cfg.outdir)
    _check_run(out, record, cfg.overwrite)
    for spec in models:
        write_metadata(out / "images", spec.name, records)


def _generate_missing(cfg, state, settings, models, items, arch: str, rank: int, world: int) -> None:
    """Generate this process's share of the missing images (every process lists them before anyone writes)."""
    from icthp_core.diffusion.pipelines import load_pipeline

    images = Path(cfg.outdir) / "images"
    todo = {spec.name: missing_items(images, spec.name, items) for spec in models}
    state.wait_for_everyone()
    share = sum(len(b) for spec in models for b in shard_batches(todo[spec.name], cfg.gen_batch_size, rank, world))
    if not share:
        return
    from tqdm.auto import tqdm

    pipe = load_pipeline(cfg.model, _dtype(settings.dtype))
    if cfg.cpu_offload:
        pipe.enable_model_cpu_offload(device=state.device)
    else:
        pipe.to(state.device)
    pipe.set_progress_bar_config(disable=True)
    with tqdm(total=share, desc=f"generate [{rank}]", disable=not cfg.progress, unit="img") as bar:
        for spec in models:
            generate_images(
                pipe, settings, spec, todo[spec.name], images, arch, cfg.gen_batch_size, rank, world, bar.update
            )
    del pipe
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _report(cfg: EvalGenConfig, names: list[str], items: list[ImageItem], metrics: list[str]) -> dict:
    """Main process: the summary, win rates, grids and plot from this run's score rows."""
    out = Path(cfg.outdir)
    keys = {(m, it.index, it.n) for m in names for it in items}
    rows = [r for r in read_score_rows(out / "scores") if (r["model"], r["index"], r["n"]) in keys]
    bad = [r for r in rows if r.get("error")]
    if bad:
        raise DataError(f"{out / bad[0]['image']}: {bad[0]['error']} ({len(bad)} image(s) could not be scored)")
    return write_report(out, rows, [JPEG, *metrics], names, cfg.seeds_per_prompt, cfg.grid_prompts)


def run_evalgen(cfg: EvalGenConfig, make_scorer=None, rank: int | None = None, world: int | None = None) -> dict:
    """Generate, score and report; returns the report's paths (on the main process; {} on the others).

    Process rank/count come from accelerate (`accelerate launch`) unless given. `make_scorer`: a function that
    returns a MultiScorer (default: built from `cfg.metrics`/`cfg.sources`)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from icthp_core.diffusion.pipelines import pipeline_info

    # PartialState reads no ACCELERATE_USE_CPU; without CUDA, several processes meet over gloo
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    rank = state.process_index if rank is None else rank
    world = state.num_processes if world is None else world
    records = load_prompt_set(cfg.prompts, cfg.prompt_column, cfg.limit)
    names = [BASE] + [s.name for s in cfg.loras]
    if len(set(names)) != len(names):
        raise ConfigError(f"--lora: model names must be unique, got {names}")
    arch, guidance_embeds = pipeline_info(cfg.model)
    gen_dtype = cfg.gen_dtype or ("bf16" if state.device.type == "cuda" else "fp32")
    settings = _settings(cfg, arch, guidance_embeds, gen_dtype)
    models = [ModelSpec(BASE), *cfg.loras]
    if rank == 0:
        _setup_run(cfg, settings, records, models)
    state.wait_for_everyone()

    # 1. generation
    items = plan_items(records, cfg.seeds_per_prompt, cfg.seed)
    _generate_missing(cfg, state, settings, models, items, arch, rank, world)
    state.wait_for_everyone()

    # 2. scoring
    metrics = list(cfg.metrics)

    def default_scorer():
        from icthp_core.scoring.scorer import MultiScorer

        device = cfg.score_device or str(state.device)
        return MultiScorer(metrics, cfg.sources, device=device, dtype=cfg.score_dtype)

    todo_scores = unscored(cfg.outdir, names, items, metrics)
    state.wait_for_everyone()
    scorer = make_scorer or default_scorer
    score_images(cfg.outdir, todo_scores, metrics, scorer, rank, world, cfg.score_batch_size, cfg.workers, cfg.progress)
    state.wait_for_everyone()

    # 3. report (main process)
    return _report(cfg, names, items, metrics) if rank == 0 else {}
