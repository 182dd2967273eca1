"""The plan of an `icthp score` run: its settings (`ScoreConfig`) turned into shards, before any model loads.

Sources, in this order: bad lines of `--prompts-file` (error rows), image files (folders, lists, prompts file),
every `--dataset`, or (`from_metadata`) the scores stored in PNG metadata. Repeated (image, prompt) items and
repeated datasets are dropped (one row per item). Shards are small JSON-able dicts (see `data.sources`) plus the
kind `rows`: rows that are already final (error rows, metadata records) and go to the output without a model.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from icthp_core.data.images import DecodePolicy, parse_decode_policy
from icthp_core.data.rows import row_key
from icthp_core.errors import ConfigError, DataError

DEFAULT_METRICS = "ict,hp,ict_hp"
ENGINES = ("local", "ray")
DECODES = ("auto", "cpu", "gpu")


@dataclass
class ScoreConfig:
    """Everything an `icthp score` run needs (the command line of `icthp score`, typed).

    Args:
        images: image files and/or folders (a folder: its image files).
        prompt: the prompt of every image (and of every dataset record, overriding theirs).
        prompts_file: a CSV/JSONL of {image, prompt} rows.
        datasets: parquet files/folders, WebDataset tars/folders, datasets folders or hub ids (`hf:<id>`).
        dataset_format, image_column, prompt_column, split: how to read the datasets.
        keep_columns: input columns copied to the output rows (as text).
        shard_size: records per shard (resume granularity of a folder output).
        metrics: comma-separated metric names or 'all'; None = ict,hp,ict_hp (with `from_metadata`: every stored).
        from_metadata: read the scores stored in the images' PNG metadata instead of scoring (no model).
        output: .jsonl, .csv, .parquet or a folder of parquet shards; None = no file.
        resume, retry_errors, overwrite: continue the output / score its error rows again / replace it.
        engine: 'local' (this process) or 'ray' (a Ray Data pipeline; address, actors, gpus_per_actor).
        sources: weights per base metric; device, dtype, batch_size, workers, decode, compile: how models run.
        decode_policy: 'view' (EXIF orientation, alpha on white) or 'upstream' (the reference code's
            `convert("RGB")`); see `icthp_core.data.images.DecodePolicy`.
        progress: show a progress bar.
    """

    images: Sequence[str] = ()
    prompt: str | None = None
    prompts_file: str | None = None
    datasets: Sequence[str] = ()
    dataset_format: str = "auto"
    image_column: str | None = None
    prompt_column: str | None = None
    keep_columns: Sequence[str] = ()
    split: str = "train"
    shard_size: int = 256
    metrics: str | None = None
    from_metadata: bool = False
    output: str | None = None
    resume: bool = False
    retry_errors: bool = False
    overwrite: bool = False
    engine: str = "local"
    address: str | None = None
    actors: int | None = None
    gpus_per_actor: float | None = None
    sources: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    dtype: str = "fp32"
    batch_size: int = 32
    workers: int | None = None
    decode: str = "auto"
    compile: bool = False
    decode_policy: str = "view"
    progress: bool = True


@dataclass
class Plan:
    """Shards to run, the output columns (metrics, kept columns) and what planning dropped."""

    shards: list[dict]
    metrics: list[str]
    keep: list[str]
    duplicates: int = 0
    has_datasets: bool = False

    @property
    def fingerprint(self) -> str:
        """A hash of the shards and columns: a resumed folder output must match the run that wrote it."""
        blob = json.dumps({"shards": self.shards, "metrics": self.metrics, "keep": self.keep}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def needs_model(self, todo: Sequence[int]) -> bool:
        return any(self.shards[i]["kind"] != "rows" for i in todo)


def check_config(config: ScoreConfig) -> None:
    """One-line ConfigError for settings that cannot work together or are out of range."""
    if config.prompt is not None and not config.prompt.strip():
        raise ConfigError("--prompt is empty")
    if config.retry_errors and not config.resume:
        raise ConfigError("--retry-errors needs --resume")
    for name, value in (("--shard-size", config.shard_size), ("--batch-size", config.batch_size)):
        if value < 1:
            raise ConfigError(f"{name} {value}: must be >= 1")
    if config.workers is not None and config.workers < 0:
        raise ConfigError(f"--workers {config.workers}: must be >= 0")
    if config.engine not in ENGINES:
        raise ConfigError(f"--engine {config.engine!r}: choose from {', '.join(ENGINES)}")
    if config.decode not in DECODES:
        raise ConfigError(f"--decode {config.decode!r}: choose from {', '.join(DECODES)}")
    policy = parse_decode_policy(config.decode_policy, "--decode-policy")
    if config.decode == "gpu" and policy is DecodePolicy.UPSTREAM:
        raise ConfigError('--decode gpu decodes with the "view" policy only; use --decode cpu or auto')
    _check_unused(config)
    if config.from_metadata and (config.datasets or config.prompts_file or config.engine != "local"):
        raise ConfigError("--from-metadata reads PNG files and loads no model: --dataset, --prompts-file and "
                          "--engine ray do not apply")  # fmt: skip


def _check_unused(config: ScoreConfig) -> None:
    """Options that the chosen engine or inputs would ignore are refused (one line), never silently dropped."""
    if config.engine == "ray" and (config.compile or config.decode == "gpu"):
        raise ConfigError("--compile and --decode gpu apply to --engine local (Ray actors decode on the CPU)")
    if config.engine == "local" and (config.address or config.actors is not None or config.gpus_per_actor is not None):
        raise ConfigError("--address, --actors and --gpus-per-actor apply to --engine ray")
    if (config.resume or config.overwrite) and not config.output:
        raise ConfigError("--resume and --overwrite apply to an --output file or folder; none was given")
    if config.keep_columns and not config.datasets:
        raise ConfigError("--keep-columns copies columns of --dataset inputs; no --dataset was given")


def resolve_metrics(text: str | None) -> list[str]:
    """The metric list of `text` (default ict,hp,ict_hp); ConfigError for unknown names."""
    from icthp_core.scoring.registry import parse_metrics

    try:
        return parse_metrics(text if text is not None else DEFAULT_METRICS)
    except ValueError as e:  # the registry's message names --metrics and the choices
        raise ConfigError(str(e)) from None


def needs_prompt(metrics: Sequence[str]) -> bool:
    from icthp_core.scoring.registry import METRICS, required_base_metrics

    return any(METRICS[m].needs_prompt for m in required_base_metrics(list(metrics)))


def unique_items(items: Sequence[tuple[str, str | None]]) -> tuple[list[tuple[str, str | None]], int]:
    """Items with repeated (image, prompt) pairs dropped (first kept, order kept), and how many were dropped."""
    seen: set[tuple[str, str]] = set()
    out = []
    for item in items:
        key = row_key(*item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out, len(items) - len(out)


def _row_shards(rows: list[dict], size: int) -> list[dict]:
    return [{"kind": "rows", "rows": rows[s : s + size]} for s in range(0, len(rows), size)]


def _file_items(config: ScoreConfig) -> tuple[list[tuple[str, str | None]], list[dict]]:
    """(image, prompt) items of the files and the prompts file, and error rows of its bad lines."""
    from icthp_core.data.images import expand_paths
    from icthp_core.data.prompts import read_prompt_rows

    items: list[tuple[str, str | None]] = []
    bad: list[dict] = []
    if config.prompts_file:
        items, bad = read_prompt_rows(config.prompts_file)
    if config.images:
        items += [(p, config.prompt) for p in expand_paths(list(config.images))]
    return items, bad


def _dataset_shards(config: ScoreConfig, keep: list[str]) -> list[dict]:
    from icthp_core.data.sources import plan_dataset

    shards: list[dict] = []
    for source in dict.fromkeys(config.datasets):  # the same dataset twice is read once
        try:
            shards += plan_dataset(
                source,
                config.dataset_format,
                config.image_column,
                config.prompt_column,
                keep,
                config.split,
                config.shard_size,
                prompt=config.prompt,
            )
        except DataError:
            raise
        except ValueError as e:  # planning checks files and columns: its messages name the dataset
            raise DataError(str(e)) from None
    return shards


def build_plan(config: ScoreConfig) -> Plan:
    """The plan of `config` (reads file lists, prompts files, dataset schemas; no image, no model)."""
    from icthp_core.data.sources import plan_files

    check_config(config)
    keep = list(dict.fromkeys(c.strip() for c in config.keep_columns if c.strip()))
    if config.from_metadata:
        return metadata_plan(config, keep)
    metrics = resolve_metrics(config.metrics)
    items, bad = _file_items(config)
    items, n_dup = unique_items(items)
    if needs_prompt(metrics) and any(p is None for _, p in items):
        raise ConfigError(f"metrics {metrics} need a prompt: pass --prompt or --prompts-file")
    shards = _row_shards(bad, config.shard_size) + plan_files(items, config.shard_size)
    shards += _dataset_shards(config, keep)
    if not shards:
        raise DataError("no images given (pass files/folders, --prompts-file or --dataset)")
    return Plan(shards, metrics, keep, n_dup, bool(config.datasets))


# ------------------------------------------------------------------------------------------ --from-metadata
def metadata_row(path: str) -> dict:
    """The row of one image's stored record: its prompt, model and scores; an error row when it has none or a
    malformed one (never an abort, never a non-finite number)."""
    from PIL import Image

    from icthp_core.data.metadata import read_record

    row: dict = {"image": path, "prompt": None, "model": None, "error": None}
    try:
        record = read_record(path)
    except (OSError, ValueError, RecursionError, SyntaxError, Image.DecompressionBombError) as e:
        msg = str(e) if str(path) in str(e) else f"{path}: cannot read its metadata ({type(e).__name__}: {e})"
        return row | {"error": msg}
    if record is None:
        return row | {"error": f"{path}: no icthp_scores metadata"}
    prompt, model = record.get("prompt"), record.get("model")
    row["prompt"] = prompt if isinstance(prompt, str) else None
    row["model"] = model if isinstance(model, str) else None
    for name, value in record["scores"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return row | {"error": f"{path}: stored score {str(name)[:40]!r} is not a finite number"}
        row[str(name)] = float(value)
    return row


def _stored_metrics(rows: list[dict]) -> list[str]:
    from icthp_core.scoring.registry import METRICS

    names = {k for r in rows if r["error"] is None for k in r if k not in ("image", "prompt", "model", "error")}
    return [m for m in METRICS if m in names] + sorted(names - set(METRICS))


def metadata_plan(config: ScoreConfig, keep: list[str]) -> Plan:
    """`--from-metadata`: every image's stored record read now (text chunks; no model), as rows shards."""
    from icthp_core.data.images import expand_paths

    if keep:
        raise ConfigError("--keep-columns applies to --dataset inputs, not to --from-metadata")
    paths, n_dup = unique_items([(p, None) for p in expand_paths(list(config.images))])
    if not paths:
        raise DataError("no images given (pass PNG files or folders)")
    rows = [metadata_row(p) for p, _ in paths]
    metrics = resolve_metrics(config.metrics) if config.metrics is not None else _stored_metrics(rows)
    if not metrics:
        metrics = resolve_metrics(None)
    for r in rows:
        missing = [m for m in metrics if r["error"] is None and m not in r]
        if missing:
            r["error"] = f"{r['image']}: no stored score for {', '.join(missing)}"
    return Plan(_row_shards(rows, config.shard_size), metrics, ["model"], n_dup)
