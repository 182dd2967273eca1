"""A small accelerate training engine shared by the ICT and HP stages.

- configs are dataclasses, loaded from YAML and overridden by `key=value` arguments;
- `accelerate launch` gives DDP / multi-node / DeepSpeed ZeRO-2 (see `train/configs/`);
- checkpoints: `accelerator.save_state` + a step counter under `<output_dir>/checkpoints/step_<N>/`, written
  completely before they are marked usable; `resume: auto` continues from the newest one. The data order is a
  function of (seed, epoch) and random numbers are re-seeded from (seed, step, rank) every step, so a killed and
  resumed run continues exactly as an uninterrupted one;
- metrics go to accelerate trackers (tensorboard by default) and `<output_dir>/metrics.jsonl`; a plot
  `<output_dir>/curves.png` is drawn at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("icthp.train")

COMPLETE_MARKER = "COMPLETE"


@dataclass
class TrainConfig:
    """Options common to both stages (YAML keys of the same name)."""

    output_dir: str = "runs/stage"
    train_data: str = ""  # triplet table (.jsonl/.csv/.parquet) or Pick-High .pkl (with trust_pickle)
    val_data: str | None = None
    image_root: str | None = None  # base folder for relative image paths (default: the table's folder)
    trust_pickle: bool = False  # allow reading Pick-High's pickled DataFrames (runs code: trusted files only)
    verify_images: bool = False  # decode every image once at load time (bad ones skipped and reported)
    limit_train: int | None = None
    limit_val: int | None = None
    cache_images: bool = False  # keep preprocessed images in memory (small data sets only)
    base_model: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # hub id or local dir/file of a CLIP
    seed: int = 0
    max_steps: int = 1000
    batch_size: int = 32  # per process
    gradient_accumulation_steps: int = 1
    lr: float = 3e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    warmup_steps: int = 500
    lr_schedule: str = "constant"  # after warmup: "constant" | "cosine" | "linear"
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"; "no" defers to `accelerate launch --mixed_precision`
    cpu: bool = False  # force CPU (several CPU processes under `accelerate launch` use gloo)
    gradient_checkpointing: bool = False
    num_workers: int = 2
    log_every: int = 10
    eval_every: int = 500  # 0: only at the end
    checkpoint_every: int = 1000  # 0: only at the end
    checkpoints_total_limit: int | None = 3
    resume: str | None = "auto"  # "auto" (newest complete checkpoint), a checkpoint dir, or null
    report_to: str = "tensorboard"  # any accelerate tracker name, "all", or "none"
    eval_batch_size: int = 64
    plot: bool = True
    debug_crash_at_step: int | None = None  # testing: hard-exit (as if killed) after this optimizer step


# ----------------------------------------------------------------------------------------------- configs


def _coerce(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """Check option names and convert values to the field types (YAML reads `1e-3` as a string)."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(hints)}")
    out = {}
    for k, v in data.items():
        hint = hints[k]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = set(typing.get_args(hint)) if union else {hint}
        try:
            if v is None or type(v) in args:
                pass
            elif float in args and isinstance(v, str | int):
                v = float(v)
            elif int in args and isinstance(v, str):
                v = int(v)
            elif any(typing.get_origin(a) is tuple or a is tuple for a in args) and isinstance(v, list):
                v = tuple(v)
        except ValueError:
            raise ValueError(f"{where}: option {k}={v!r} is not a valid {hints[k]}") from None
        out[k] = v
    return out


def load_config(cls: type, path: str | os.PathLike | None = None, overrides: list[str] | None = None):
    """Build `cls` from a YAML file and `key=value` overrides (values parsed as YAML scalars)."""
    import yaml

    data: dict[str, Any] = {}
    if path:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config must be a YAML mapping, got {type(loaded).__name__}")
        data.update(_coerce(cls, loaded, str(path)))
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
        k, v = item.split("=", 1)
        data.update(_coerce(cls, {k.strip(): yaml.safe_load(v)}, "command line"))
    return cls(**data)


def parse_args(cls: type, argv: list[str] | None, description: str):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--config", help="YAML file with the options of " + cls.__name__)
    ap.add_argument("overrides", nargs="*", help="key=value options overriding the YAML file")
    a = ap.parse_args(argv)
    return load_config(cls, a.config, a.overrides)


def config_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------------------------- data order


class EpochSampler(torch.utils.data.Sampler[int]):
    """A random permutation that depends only on (seed, epoch): reproducible across kills and resumes."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class TrainState:
    """The step counter saved with every checkpoint (via `register_for_checkpointing`)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        self.step = int(sd["step"])


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        raise ValueError(f"lr_schedule={cfg.lr_schedule!r}: expected constant, cosine or linear")

    return f


# ----------------------------------------------------------------------------------------------- checkpoints


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def resolve_resume(cfg: TrainConfig) -> Path | None:
    if not cfg.resume:
        return None
    if cfg.resume == "auto":
        ckpts = list_checkpoints(cfg.output_dir)
        return ckpts[-1] if ckpts else None
    p = Path(cfg.resume)
    if not (p / COMPLETE_MARKER).is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: not a complete checkpoint directory (no {COMPLETE_MARKER})")
    return p


# ----------------------------------------------------------------------------------------------- stage API


class Stage:
    """What a training stage provides to :func:`run`."""

    name = "stage"
    config: TrainConfig

    def build(self, accelerator) -> nn.Module:
        """The module to train (its forward is what DDP wraps); trainable params have requires_grad."""
        raise NotImplementedError

    def train_dataset(self, accelerator) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def val_dataset(self, accelerator) -> torch.utils.data.Dataset | None:
        return None

    def loss(self, module: nn.Module, batch: dict[str, torch.Tensor], accelerator) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def evaluate(self, module: nn.Module, loader, accelerator) -> dict[str, float]:
        return {}

    def export(self, module: nn.Module, accelerator) -> Path | None:
        return None

    def summary(self) -> dict[str, Any]:
        return {}


# ----------------------------------------------------------------------------------------------- logging


class MetricsLog:
    """Append-only JSON lines (main process) mirrored to the accelerate trackers."""

    def __init__(self, accelerator, path: Path):
        self.acc, self.path = accelerator, path

    def log(self, values: dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in values.items()}
        self.acc.log(values, step=step)
        if self.acc.is_main_process:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")


def read_metrics(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """{name: [(step, value), ...]} from metrics.jsonl; a value logged again for a step (after a resume) wins."""
    series: dict[str, dict[int, float]] = {}
    p = Path(path)
    if not p.is_file():
        return {}
    for line in p.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        step = int(row.pop("step"))
        for k, v in row.items():
            series.setdefault(k, {})[step] = v
    return {k: sorted(v.items()) for k, v in series.items()}


def plot_metrics(metrics_file: str | os.PathLike, out_png: str | os.PathLike, title: str = "") -> Path:
    """Loss curves (left) and validation accuracies (right) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(metrics_file)
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    for k, pts in series.items():
        if k.startswith("train/") and "lr" not in k:
            ax_l.plot(*zip(*pts, strict=True), label=k)
        elif k.startswith("val/"):
            ax_a.plot(*zip(*pts, strict=True), marker="o", label=k)
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("loss")
    ax_l.set_title("training loss")
    ax_a.set_xlabel("step")
    ax_a.set_ylabel("pairwise accuracy")
    ax_a.set_title("validation accuracy")
    ax_a.axhline(0.5, color="grey", lw=0.8, ls="--")
    for ax in (ax_l, ax_a):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)


# ----------------------------------------------------------------------------------------------- the loop


def _make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    log_with = None if cfg.report_to in (None, "", "none") else cfg.report_to
    # the config's bf16/fp16 wins; "no" defers to `accelerate launch --mixed_precision` (its environment variable)
    mp = cfg.mixed_precision if cfg.mixed_precision != "no" else os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    return Accelerator(
        cpu=cfg.cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"),
        mixed_precision=mp,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs")),
    )


def _flat_config(cfg) -> dict[str, Any]:
    return {k: (v if isinstance(v, int | float | str | bool) else str(v)) for k, v in config_dict(cfg).items()}


def _loader(ds, batch_size: int, sampler=None, drop_last: bool = False, num_workers: int = 0):
    from icthp_core.data.datasets import collate

    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=drop_last,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def run(stage: Stage) -> dict[str, Any]:
    """Train `stage` to `max_steps` (resuming when possible), evaluate, export, plot; returns the summary."""
    from accelerate.utils import set_seed

    cfg = stage.config
    if not cfg.train_data:
        raise ValueError("train_data: required (a triplet or pair table, see docs/training.md)")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    acc = _make_accelerator(cfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if acc.is_main_process:
        (out / f"{stage.name}_config.json").write_text(json.dumps(config_dict(cfg), indent=2))
    set_seed(cfg.seed)
    logger.info(
        "%s: %d process(es), %s, device %s, mixed precision %s",
        stage.name,
        acc.num_processes,
        acc.distributed_type,
        acc.device,
        acc.mixed_precision,
    )

    module = stage.build(acc)
    train_ds = stage.train_dataset(acc)
    val_ds = stage.val_dataset(acc)
    sampler = EpochSampler(len(train_ds), cfg.seed)
    train_loader = _loader(train_ds, cfg.batch_size, sampler, drop_last=True, num_workers=cfg.num_workers)
    params = [p for p in module.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    n_all = sum(p.numel() for p in module.parameters())
    logger.info("%s: %d / %d parameters trainable", stage.name, n_train, n_all)
    opt = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
    module, opt, train_loader = acc.prepare(module, opt, train_loader)
    # The schedule counts optimizer steps whatever the number of processes (accelerate's prepared scheduler would
    # step once per process), so it is stepped here on every synchronised step and checkpointed by us.
    sched = torch.optim.lr_scheduler.LambdaLR(opt.optimizer if hasattr(opt, "optimizer") else opt, lr_lambda(cfg))
    state = TrainState()
    acc.register_for_checkpointing(state)
    acc.register_for_checkpointing(sched)

    micro_per_epoch = len(train_loader)
    steps_per_epoch = micro_per_epoch // cfg.gradient_accumulation_steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"train_data: {len(train_ds)} examples give no full optimizer step with batch_size={cfg.batch_size} x "
            f"{acc.num_processes} processes x gradient_accumulation_steps={cfg.gradient_accumulation_steps}"
        )

    resume_dir = resolve_resume(cfg)
    if resume_dir is not None:
        acc.load_state(str(resume_dir))
        logger.info("resumed from %s at step %d", resume_dir, state.step)
    if acc.is_main_process and resume_dir is None and (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()  # a fresh run: do not mix curves with an older one
    if log_with_trackers(cfg):
        acc.init_trackers(stage.name, config=_flat_config(cfg))
    mlog = MetricsLog(acc, out / "metrics.jsonl")
    val_loader = _loader(val_ds, cfg.eval_batch_size, num_workers=cfg.num_workers) if val_ds is not None else None

    def evaluate(step: int) -> dict[str, float]:
        res: dict[str, float] = {}
        if val_loader is not None and acc.is_main_process:
            m = acc.unwrap_model(module)
            m.eval()
            with torch.no_grad(), acc.autocast():
                res = stage.evaluate(m, val_loader, acc)
            m.train()
            mlog.log({f"val/{k}": v for k, v in res.items()}, step)
            logger.info("step %d validation: %s", step, json.dumps({k: round(v, 4) for k, v in res.items()}))
        acc.wait_for_everyone()
        return res

    def checkpoint(step: int) -> None:
        d = out / "checkpoints" / f"step_{step}"
        acc.save_state(str(d))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (d / COMPLETE_MARKER).write_text(str(step))
            if cfg.checkpoints_total_limit:
                for old in list_checkpoints(out)[: -cfg.checkpoints_total_limit]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    module.train()
    step = state.step
    epoch, skip = divmod(step, steps_per_epoch)
    skip *= cfg.gradient_accumulation_steps
    running: dict[str, float] = {}
    n_running, t0 = 0, time.time()
    last_val: dict[str, float] = {}
    while step < cfg.max_steps:
        loader = acc.skip_first_batches(train_loader, skip) if skip else train_loader
        loader.set_epoch(epoch)
        micro = skip
        for batch in loader:
            if micro >= steps_per_epoch * cfg.gradient_accumulation_steps:
                break
            set_seed(cfg.seed * 1_000_003 + step * cfg.gradient_accumulation_steps + micro, device_specific=True)
            with acc.accumulate(module):
                loss, logs = stage.loss(module, batch, acc)
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                if acc.sync_gradients:
                    sched.step()
                opt.zero_grad(set_to_none=True)
            micro += 1
            for k, v in {"loss": loss.detach().float().item(), **logs}.items():
                running[k] = running.get(k, 0.0) + float(v)
            n_running += 1
            if not acc.sync_gradients:
                continue
            step += 1
            state.step = step
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                vals = {f"train/{k}": v / n_running for k, v in running.items()}
                vals["train/lr"] = sched.get_last_lr()[0]
                vals = {k: _mean_across(acc, v) for k, v in vals.items()}
                vals["train/steps_per_s"] = cfg.log_every / max(1e-9, time.time() - t0)
                mlog.log(vals, step)
                logger.info("step %d: %s", step, json.dumps({k: round(v, 6) for k, v in vals.items()}))
                running, n_running, t0 = {}, 0, time.time()
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                last_val = evaluate(step)
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.max_steps:
                checkpoint(step)
            if cfg.debug_crash_at_step is not None and step == cfg.debug_crash_at_step:
                logger.warning("debug_crash_at_step=%d: exiting abruptly", step)
                sys.stdout.flush()
                os._exit(17)
            if step >= cfg.max_steps:
                break
        epoch += 1
        skip = 0

    last_val = evaluate(step) or last_val
    exported = None
    if acc.is_main_process:
        exported = stage.export(acc.unwrap_model(module), acc)
    acc.wait_for_everyone()
    summary = {
        "stage": stage.name,
        "steps": step,
        "num_processes": acc.num_processes,
        "val": last_val,
        "exported": str(exported) if exported else None,
        **stage.summary(),
    }
    if acc.is_main_process:
        (out / f"{stage.name}_summary.json").write_text(json.dumps(summary, indent=2))
        if cfg.plot:
            plot_metrics(out / "metrics.jsonl", out / "curves.png", title=f"{stage.name} training")
    acc.end_training()
    return summary


def log_with_trackers(cfg: TrainConfig) -> bool:
    return cfg.report_to not in (None, "", "none")


def _mean_across(acc, value: float) -> float:
    if acc.num_processes == 1:
        return float(value)
    t = torch.tensor([float(value)], device=acc.device)
    return float(acc.reduce(t, reduction="mean").item())
