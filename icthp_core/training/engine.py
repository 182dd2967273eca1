"""A small accelerate training engine shared by the ICT and HP stages.

- configs are dataclasses (:mod:`icthp_core.training.config`: YAML + `key=value` overrides, `recipe: paper |
  upstream` presets);
- `accelerate launch` gives DDP / multi-node / DeepSpeed ZeRO-2 (see `train/configs/`);
- checkpoints (:mod:`icthp_core.training.checkpointing`): `accelerator.save_state` + a step counter under
  `<output_dir>/checkpoints/step_<N>/`, written completely before they are marked usable; `resume: auto` continues
  from the newest one. The data order is a function of (seed, epoch) and random numbers are re-seeded from
  (seed, step, rank) every step, so a killed and resumed run continues exactly as an uninterrupted one;
- with `best_metric` set, the model of the best validation step is exported (the last one too, as `<name>_last`);
  `export_candidates_every: N` restricts the candidates to multiples of N and the last step (upstream HP: 5000);
- metrics go to accelerate trackers and `<output_dir>/metrics.jsonl`; a plot `<output_dir>/curves.png` is drawn
  at the end (:mod:`icthp_core.training.plots`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from icthp_core.errors import CheckpointError, ConfigError
from icthp_core.training.checkpointing import (
    COMPLETE_MARKER,
    BestTracker,
    checkpoint_dir,
    list_checkpoints,
    mark_complete,
    resume_candidates,
    rotate,
)
from icthp_core.training.config import RewardTrainConfig, config_dict, load_config
from icthp_core.training.config_check import CONFIG_FILE, check_config, config_changes, format_changes, saved_config
from icthp_core.training.metrics_log import METRICS_FILE, MetricsLog, read_metrics
from icthp_core.training.optim import optimizer_from_config
from icthp_core.training.plots import plot_metrics

__all__ = [
    "RewardTrainConfig",
    "Stage",
    "run",
    "lr_lambda",
    "load_config",
    "config_dict",
    "read_metrics",
    "plot_metrics",
    "list_checkpoints",
    "COMPLETE_MARKER",
]

logger = logging.getLogger("icthp.train")


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
    """The step counter and the best validation value, saved with every checkpoint (`register_for_checkpointing`)."""

    def __init__(self, best: BestTracker | None = None) -> None:
        self.step = 0
        self.best = best or BestTracker(None)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "best": self.best.state_dict()}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.step = int(sd["step"])
        if "best" in sd:
            self.best.load_state_dict(sd["best"])


def lr_lambda(cfg: RewardTrainConfig):
    """Multiplier of the peak LR at optimizer step s (0-based).

    Warmup (s < W): "linear" (s+1)/W, or "log" log(s+1)/log(W) (DeepSpeed's WarmupDecayLR, warmup_type=log, as the
    upstream trainer). After warmup: "constant" 1, "cosine" 0.5(1+cos(pi p)), "linear" (T-s)/(T-W) -> 0 at T,
    with T = max_steps and p = (s-W)/(T-W).
    """
    if cfg.warmup_type not in ("linear", "log"):
        raise ConfigError(f"warmup_type={cfg.warmup_type!r}: expected linear or log")
    if cfg.lr_schedule not in ("constant", "cosine", "linear"):
        raise ConfigError(f"lr_schedule={cfg.lr_schedule!r}: expected constant, cosine or linear")

    def f(step: int) -> float:
        w = cfg.warmup_steps
        if w > 0 and step < w:
            if cfg.warmup_type == "log":
                return math.log(step + 1) / math.log(w) if w > 1 else 1.0
            return (step + 1) / w
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - w) / max(1, cfg.max_steps - w))
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return f


# ----------------------------------------------------------------------------------------------- stage API


class Stage:
    """What a training stage provides to :func:`run`."""

    name = "stage"
    config: RewardTrainConfig

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

    def export(self, module: nn.Module, accelerator, name: str | None = None) -> Path | None:
        """Write the model in its published layout to `output_dir/<name>` (default: the config's export_name);
        must not modify `module` (it may be called mid-training for the best-validation model)."""
        return None

    def summary(self) -> dict[str, Any]:
        return {}


# ----------------------------------------------------------------------------------------------- the loop


def _make_accelerator(cfg: RewardTrainConfig):
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


class _RewardRun:
    """One reward-training run in named phases: `__init__` (setup), `resume`, `train` (steps), `evaluate`,
    `checkpoint`, `export`; `run` drives them."""

    def __init__(self, stage: Stage) -> None:
        from accelerate.utils import set_seed

        self.stage, self.cfg = stage, stage.config
        cfg = self.cfg
        check_config(cfg, complete=True)
        if not cfg.train_data:
            raise ConfigError("train_data: required (a triplet or pair table, see docs/training.md)")
        self.out = Path(cfg.output_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        # checked before anything is built: a changed config is refused (or its differences kept for `resume`)
        self.resume_dirs = resume_candidates(cfg.resume, self.out)
        first = self.resume_dirs[0] if self.resume_dirs else None
        self.changes = _resume_changes(cfg, first, self.out / f"{stage.name}_config.json") if first else {}
        self.acc = acc = _make_accelerator(cfg)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if acc.is_main_process:
            (self.out / f"{stage.name}_config.json").write_text(json.dumps(config_dict(cfg), indent=2))
        set_seed(cfg.seed)
        logger.info(
            "%s: %d process(es), %s, device %s, mixed precision %s",
            stage.name,
            acc.num_processes,
            acc.distributed_type,
            acc.device,
            acc.mixed_precision,
        )
        self._build()
        self.state = TrainState(BestTracker(cfg.best_metric, cfg.best_mode))
        acc.register_for_checkpointing(self.state)
        acc.register_for_checkpointing(self.sched)
        self.steps_per_epoch = len(self.train_loader) // cfg.gradient_accumulation_steps
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"train_data: {len(self.train_ds)} examples give no full optimizer step with batch_size="
                f"{cfg.batch_size} x {acc.num_processes} processes x gradient_accumulation_steps="
                f"{cfg.gradient_accumulation_steps}"
            )
        self.export_name = getattr(cfg, "export_name", stage.name)
        self.last_val: dict[str, float] = {}

    def _build(self) -> None:
        """The module, data loaders, optimizer and schedule, prepared by accelerate."""
        stage, cfg, acc = self.stage, self.cfg, self.acc
        module = stage.build(acc)
        self.train_ds = stage.train_dataset(acc)
        val_ds = stage.val_dataset(acc)
        sampler = EpochSampler(len(self.train_ds), cfg.seed)
        train_loader = _loader(self.train_ds, cfg.batch_size, sampler, drop_last=True, num_workers=cfg.num_workers)
        self.params = [p for p in module.parameters() if p.requires_grad]
        n_train = sum(p.numel() for p in self.params)
        n_all = sum(p.numel() for p in module.parameters())
        logger.info("%s: %d / %d parameters trainable", stage.name, n_train, n_all)
        opt = optimizer_from_config(cfg, self.params)
        self.module, self.opt, self.train_loader = acc.prepare(module, opt, train_loader)
        # The schedule counts optimizer steps whatever the number of processes (accelerate's prepared scheduler
        # would step once per process), so it is stepped here on every synchronised step and checkpointed by us.
        base_opt = self.opt.optimizer if hasattr(self.opt, "optimizer") else self.opt
        self.sched = torch.optim.lr_scheduler.LambdaLR(base_opt, lr_lambda(cfg))
        self.val_loader = (
            _loader(val_ds, cfg.eval_batch_size, num_workers=cfg.num_workers) if val_ds is not None else None
        )

    def resume(self) -> None:
        """Load the latest (or the named) checkpoint; open the metrics log (fresh when nothing resumed)."""
        cfg, acc = self.cfg, self.acc
        resume_dir = _load_resume(acc, self.resume_dirs)
        if resume_dir is not None:
            logger.info("resumed from %s at step %d", resume_dir, self.state.step)
            changes = self.changes if resume_dir == self.resume_dirs[0] else _resume_changes(cfg, resume_dir, None)
            if changes:
                _apply_optimizer_options(cfg, self.opt, self.sched)
                logger.warning("resumed with changed options (allow_config_change=true): %s", format_changes(changes))
        if log_with_trackers(cfg):
            acc.init_trackers(self.stage.name, config=_flat_config(cfg))
        self.mlog = MetricsLog(self.out / METRICS_FILE, acc, fresh=resume_dir is None, trackers=log_with_trackers(cfg))
        self.step = self.state.step

    def evaluate(self, step: int) -> dict[str, float]:
        """Validation metrics (main process), logged; exports the model when it is the best so far."""
        acc, res = self.acc, {}
        if self.val_loader is not None and acc.is_main_process:
            m = acc.unwrap_model(self.module)
            m.eval()
            with torch.no_grad(), acc.autocast():
                res = self.stage.evaluate(m, self.val_loader, acc)
            m.train()
            self.mlog.log({f"val/{k}": v for k, v in res.items()}, step)
            logger.info("step %d validation: %s", step, json.dumps({k: round(v, 4) for k, v in res.items()}))
            best = self.state.best
            if self._candidate(step) and best.update(step, res):
                path = self.stage.export(acc.unwrap_model(self.module), acc, self.export_name)
                (self.out / "best.json").write_text(json.dumps({**best.state_dict(), "exported": str(path)}))
                logger.info("step %d: new best %s=%.4f, exported to %s", step, self.cfg.best_metric, best.value, path)
        acc.wait_for_everyone()
        return res

    def _candidate(self, step: int) -> bool:
        """Whether `step` may be exported as the best (export_candidates_every: its multiples and the last step)."""
        every = self.cfg.export_candidates_every
        return not every or step % every == 0 or step >= self.cfg.max_steps

    def checkpoint(self, step: int) -> None:
        acc = self.acc
        d = checkpoint_dir(self.out, step)
        acc.save_state(str(d))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (d / CONFIG_FILE).write_text(json.dumps(config_dict(self.cfg), indent=2))
            mark_complete(d, step)
            rotate(self.out, self.cfg.checkpoints_total_limit)
        acc.wait_for_everyone()

    def micro_step(self, batch, micro: int) -> None:
        """Forward and backward of one micro-batch; the optimizer steps when gradients are synchronised."""
        from accelerate.utils import set_seed

        cfg, acc = self.cfg, self.acc
        set_seed(cfg.seed * 1_000_003 + self.step * cfg.gradient_accumulation_steps + micro, device_specific=True)
        with acc.accumulate(self.module):
            loss, logs = self.stage.loss(self.module, batch, acc)
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm:
                acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.opt.step()
            if acc.sync_gradients:
                self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        for k, v in {"loss": loss.detach().float().item(), **logs}.items():
            self.running[k] = self.running.get(k, 0.0) + float(v)
        self.n_running += 1

    def log_train(self) -> None:
        """Log the means of the micro-batches since the last log line (averaged across processes)."""
        cfg, acc = self.cfg, self.acc
        vals = {f"train/{k}": v / self.n_running for k, v in self.running.items()}
        vals["train/lr"] = self.sched.get_last_lr()[0]
        vals = {k: _mean_across(acc, v) for k, v in vals.items()}
        vals["train/steps_per_s"] = cfg.log_every / max(1e-9, time.time() - self.t0)
        self.mlog.log(vals, self.step)
        logger.info("step %d: %s", self.step, json.dumps({k: round(v, 6) for k, v in vals.items()}))
        self.running, self.n_running, self.t0 = {}, 0, time.time()

    def after_step(self) -> None:
        """Logging, validation and checkpoints due after an optimizer step (and the crash-test exit)."""
        cfg, step = self.cfg, self.step
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            self.log_train()
        due = cfg.eval_every and step % cfg.eval_every == 0
        due = due or (cfg.best_metric and cfg.export_candidates_every and step % cfg.export_candidates_every == 0)
        if due and step < cfg.max_steps:
            self.last_val = self.evaluate(step)
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.max_steps:
            self.checkpoint(step)
        if cfg.debug_crash_at_step is not None and step == cfg.debug_crash_at_step:
            logger.warning("debug_crash_at_step=%d: exiting abruptly", step)
            sys.stdout.flush()
            os._exit(17)

    def _epoch(self, loader, micro: int) -> None:
        """The remaining micro-batches of one epoch (from `micro`), stopping at max_steps."""
        cfg = self.cfg
        for batch in loader:
            if micro >= self.steps_per_epoch * cfg.gradient_accumulation_steps:
                break
            self.micro_step(batch, micro)
            micro += 1
            if not self.acc.sync_gradients:
                continue
            self.step += 1
            self.state.step = self.step
            self.after_step()
            if self.step >= cfg.max_steps:
                break

    def train(self) -> None:
        """Optimizer steps to max_steps, from the resumed position (skipping the batches already seen)."""
        cfg = self.cfg
        self.module.train()
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        skip *= cfg.gradient_accumulation_steps
        self.running, self.n_running, self.t0 = {}, 0, time.time()
        while self.step < cfg.max_steps:
            loader = self.acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
            loader.set_epoch(epoch)
            self._epoch(loader, skip)
            epoch += 1
            skip = 0

    def export(self, last_val: dict[str, float]) -> dict[str, Any]:
        """Export the last model (the best one stays `export_name` with best_metric), write the summary and plot."""
        cfg, acc, out, stage = self.cfg, self.acc, self.out, self.stage
        exported = None
        if acc.is_main_process:  # with best_metric the best model is `export_name`, the last `<export_name>_last`
            last_name = f"{self.export_name}_last" if cfg.best_metric else self.export_name
            exported = stage.export(acc.unwrap_model(self.module), acc, last_name)
            if cfg.best_metric:
                exported = out / self.export_name if self.state.best.step is not None else exported
        acc.wait_for_everyone()
        summary = {
            "stage": stage.name,
            "steps": self.step,
            "num_processes": acc.num_processes,
            "val": last_val,
            "exported": str(exported) if exported else None,
            "best": self.state.best.state_dict() if cfg.best_metric else None,
            **stage.summary(),
        }
        if acc.is_main_process:
            (out / f"{stage.name}_summary.json").write_text(json.dumps(summary, indent=2))
            if cfg.plot:
                plot_metrics(out / METRICS_FILE, out / "curves.png", title=f"{stage.name} training")
        acc.end_training()
        return summary


def run(stage: Stage) -> dict[str, Any]:
    """Train `stage` to `max_steps` (resuming when possible), evaluate, export, plot; returns the summary."""
    r = _RewardRun(stage)
    r.resume()
    r.train()
    return r.export(r.evaluate(r.step) or r.last_val)


def _resume_changes(cfg, checkpoint: Path, fallback: Path | None) -> dict[str, tuple[Any, Any]]:
    """Options that differ from those of `checkpoint`: a ConfigError listing them unless allow_config_change."""
    saved = saved_config(checkpoint, fallback)
    changes = config_changes(saved, config_dict(cfg)) if saved is not None else {}
    if changes and not cfg.allow_config_change:
        raise ConfigError(
            f"resume from {checkpoint}: options differ from the checkpoint's: {format_changes(changes)}; "
            "give allow_config_change=true to go on with the new values, or resume=null (or another output_dir) "
            "to start over"
        )
    return changes


def _load_resume(acc, candidates: list[Path]) -> Path | None:
    """Load the first readable checkpoint of `candidates` (newest first); a torn one is skipped with a warning."""
    for i, d in enumerate(candidates):
        try:
            acc.load_state(str(d))
            return d
        except Exception as e:  # noqa: BLE001  (safetensors, torch.load, pickle: any unreadable file)
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if i + 1 == len(candidates):
                raise CheckpointError(f"checkpoint {d} is unreadable ({reason}) and no earlier one is complete") from e
            logger.warning("checkpoint %s is unreadable (%s); resuming from %s instead", d, reason, candidates[i + 1])
    return None


def _apply_optimizer_options(cfg, opt, sched) -> None:
    """After loading a checkpoint, use the config's lr, weight decay, betas and eps (not the checkpoint's)."""
    groups = (opt.optimizer if hasattr(opt, "optimizer") else opt).param_groups
    sched.base_lrs = [cfg.lr] * len(groups)
    for g, f in zip(groups, sched.lr_lambdas, strict=True):
        g.update(initial_lr=cfg.lr, lr=cfg.lr * f(sched.last_epoch), weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
        g["betas"] = (cfg.adam_beta1, cfg.adam_beta2)
    sched._last_lr = [g["lr"] for g in groups]  # noqa: SLF001  (what get_last_lr() reports)


def log_with_trackers(cfg: RewardTrainConfig) -> bool:
    return cfg.report_to not in (None, "", "none")


def _mean_across(acc, value: float) -> float:
    if acc.num_processes == 1:
        return float(value)
    t = torch.tensor([float(value)], device=acc.device)
    return float(acc.reduce(t, reduction="mean").item())
