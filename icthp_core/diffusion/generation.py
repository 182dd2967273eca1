"""Generate a benchmark's images with a diffusers pipeline, its base model and each LoRA from the same noise.

Images are stored in GenEval's folder layout, one tree per model:

    <outdir>/images/<model>/<index:05d>/metadata.jsonl       (the prompt's metadata row, as GenEval writes it)
    <outdir>/images/<model>/<index:05d>/samples/<n:05d>.png  (sample n of prompt `index`)

Image (index, n) is generated from `torch.Generator("cpu").manual_seed(seed + index * seeds_per_prompt + n)`, for
the base model and every LoRA alike, so each LoRA image has a base twin from the same initial noise, and the
noise does not depend on the device, the batch size or the number of processes. A file that exists is never
generated again (files are written under a temporary name and renamed), so a killed run continues where it stopped.

Several processes (`accelerate launch`) split the work: every process lists the missing images, cuts them into
the same batches, and takes every `world`-th batch; all write into the same folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from icthp_core.errors import ConfigError, WeightsNotFoundError
from icthp_core.evaluation.prompt_sets import PromptRecord

__all__ = [
    "GenerationSettings",
    "ImageItem",
    "ModelSpec",
    "parse_lora",
    "image_path",
    "plan_items",
    "missing_items",
    "shard_batches",
    "write_metadata",
    "generate_images",
    "load_lora",
]

BASE = "base"


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: the base pipeline (`lora=None`) or the base with one LoRA at `scale`."""

    name: str
    lora: str | None = None
    scale: float = 1.0


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides the pixels; stored in `<outdir>/evalgen.json` and checked on resume."""

    model: str
    steps: int
    guidance: float
    height: int
    width: int
    seed: int = 0
    seeds_per_prompt: int = 1
    max_sequence_length: int | None = None
    dtype: str = "fp32"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ImageItem:
    """Sample `n` of prompt `index`, generated from `seed`."""

    index: int
    n: int
    seed: int
    prompt: str


def parse_lora(text: str, default_scale: float = 1.0) -> ModelSpec:
    """`[NAME=]PATH[@SCALE]` -> ModelSpec; NAME defaults to the file's folder (or stem), SCALE to `default_scale`."""
    name, sep, path = text.partition("=")
    if not sep:
        name, path = "", text
    scale = default_scale
    head, at, tail = path.rpartition("@")
    if at:
        try:
            scale = float(tail)
            path = head
        except ValueError:
            pass
    path = path.strip()
    if not path:
        raise ConfigError(f"--lora {text!r}: no path given (expected [NAME=]PATH[@SCALE])")
    if not name:
        p = Path(path)
        name = p.parent.name if p.suffix == ".safetensors" and p.stem == "pytorch_lora_weights" else p.stem or p.name
    name = name.strip()
    if not name or name == BASE or "/" in name or name.startswith("."):
        raise ConfigError(f"--lora {text!r}: bad model name {name!r} (give NAME=PATH; 'base' is reserved)")
    return ModelSpec(name, path, scale)


def image_path(root: str | Path, model: str, index: int, n: int) -> Path:
    return Path(root) / model / f"{index:05d}" / "samples" / f"{n:05d}.png"


def plan_items(records: Sequence[PromptRecord], seeds_per_prompt: int, seed: int = 0) -> list[ImageItem]:
    """Every image of the run in canonical order (prompt index, then sample)."""
    if seeds_per_prompt < 1:
        raise ConfigError(f"seeds per prompt must be >= 1, got {seeds_per_prompt}")
    return [
        ImageItem(r.index, n, seed + r.index * seeds_per_prompt + n, r.prompt)
        for r in records
        for n in range(seeds_per_prompt)
    ]


def missing_items(root: str | Path, model: str, items: Iterable[ImageItem]) -> list[ImageItem]:
    return [it for it in items if not image_path(root, model, it.index, it.n).is_file()]


def shard_batches(items: Sequence[ImageItem], batch_size: int, rank: int = 0, world: int = 1) -> list[list[ImageItem]]:
    """The batches of process `rank` among `world`: consecutive chunks of `items`, every `world`-th from `rank`."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    return batches[rank::world]


def write_metadata(root: str | Path, model: str, records: Iterable[PromptRecord]) -> None:
    """`<root>/<model>/<index:05d>/metadata.jsonl` = the prompt's metadata row (JSON object, as GenEval writes it)."""
    for r in records:
        d = Path(root) / model / f"{r.index:05d}"
        (d / "samples").mkdir(parents=True, exist_ok=True)
        text = json.dumps(r.metadata, ensure_ascii=False)
        f = d / "metadata.jsonl"
        if not f.is_file() or f.read_text(encoding="utf-8") != text:
            f.write_text(text, encoding="utf-8")


def _save_png(image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def load_lora(pipe, spec: ModelSpec, arch: str) -> None:
    """Load `spec.lora` (a .safetensors file, a folder with `pytorch_lora_weights.safetensors`, or a hub id) into
    `pipe` as adapter `spec.name` at `spec.scale`; a file written for another architecture is an error."""
    from icthp_core.diffusion.lora import WEIGHT_NAME, read_lora_metadata

    path = Path(spec.lora)
    kwargs = {}
    if path.is_file():
        kwargs["weight_name"] = path.name
        src = str(path.parent)
        file = path
    else:
        src = spec.lora
        file = path / WEIGHT_NAME if path.is_dir() else None
        if path.is_dir():
            if not file.is_file():
                raise WeightsNotFoundError(f"--lora {spec.lora}: no {WEIGHT_NAME} in this folder")
            kwargs["weight_name"] = WEIGHT_NAME
    if file is not None:
        lora_arch = read_lora_metadata(file).get("icthp.base_arch")
        if lora_arch and lora_arch != arch:
            raise ConfigError(f"--lora {spec.lora}: trained for a {lora_arch} pipeline, the base model is {arch}")
    pipe.load_lora_weights(src, adapter_name=spec.name, **kwargs)
    pipe.set_adapters([spec.name], adapter_weights=[spec.scale])


def generate_images(
    pipe,
    settings: GenerationSettings,
    spec: ModelSpec,
    items: Sequence[ImageItem],
    root: str | Path,
    arch: str,
    batch_size: int = 4,
    rank: int = 0,
    world: int = 1,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Generate this process's share of `items` (the missing images of model `spec`) into `root`; returns the
    number of images written. The LoRA (if any) is loaded for the call and unloaded afterwards."""
    batches = shard_batches(items, batch_size, rank, world)
    if not batches:
        return 0
    if spec.lora:
        load_lora(pipe, spec, arch)
    written = 0
    try:
        for batch in batches:
            kwargs = {}
            if settings.max_sequence_length is not None:
                kwargs["max_sequence_length"] = settings.max_sequence_length
            with torch.inference_mode():
                out = pipe(
                    prompt=[it.prompt for it in batch],
                    num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance,
                    height=settings.height,
                    width=settings.width,
                    generator=[torch.Generator("cpu").manual_seed(it.seed) for it in batch],
                    output_type="pil",
                    **kwargs,
                )
            for it, img in zip(batch, out.images, strict=True):
                _save_png(img, image_path(root, spec.name, it.index, it.n))
            written += len(batch)
            if progress is not None:
                progress(len(batch))
    finally:
        if spec.lora:
            pipe.unload_lora_weights()
    return written
