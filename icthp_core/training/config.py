"""One configuration system for every training job (reward stages ICT / HP and DRaFT LoRA).

A job's options are one dataclass deriving from :class:`CommonTrainConfig`. :func:`load_config` reads them from a
YAML file and a mapping of overriding values, checks names and converts values to the field types. The command line
(``icthp train-hp --config train/configs/hp_upstream.yaml max_steps=100 lr=1e-6``, ``key=value`` values parsed as YAML
scalars) is parsed in ``icthp_cli/options.py``. Names that an older version used (``iterations``,
``learning_rate``, ``save_every``, ...) are rejected with a message naming the new option, in YAML files and on the
command line alike. A text option with a fixed set of values is listed in the class's ``CHOICES`` (e.g.
``tokenizer: open_clip | hf``); any other value is a one-line :class:`ConfigError`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from icthp_core.errors import ConfigError

__all__ = [
    "CommonTrainConfig",
    "RewardTrainConfig",
    "RENAMED",
    "TOKENIZER_NAMES",
    "ConfigError",
    "load_config",
    "config_dict",
]


#: option names of older versions -> the current name (both training systems now use the right-hand names)
RENAMED: dict[str, str] = {
    "iterations": "max_steps",
    "learning_rate": "lr",
    "save_every": "checkpoint_every",
    "allow_pickle": "trust_pickle",
    "keep_checkpoints": "checkpoints_total_limit",
    "adam_weight_decay": "weight_decay",
    "adam_epsilon": "adam_eps",
}

#: the prompt tokenizer flavours of the reward stages (`icthp_core.scoring.text.TOKENIZERS`, named here without
#: importing torch so that building a job's parser stays light)
TOKENIZER_NAMES: tuple[str, ...] = ("open_clip", "hf")


@dataclass
class CommonTrainConfig:
    """Options every training job has, with the same names and meanings (YAML keys of the same name)."""

    #: text options with a fixed set of values; a subclass extends it (`{**CommonTrainConfig.CHOICES, ...}`)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"optimizer": ("adamw", "adamw8bit")}
    #: allowed numeric ranges (`icthp_core.training.config_check`); a subclass adds its own (merged along the MRO)
    RANGES: ClassVar[dict[str, str]] = {
        "seed": ">=0",
        "max_steps": ">=1",
        "batch_size": ">=1",
        "gradient_accumulation_steps": ">=1",
        "lr": ">0",
        "weight_decay": ">=0",
        "adam_beta1": ">=0,<1",
        "adam_beta2": ">=0,<1",
        "adam_eps": ">0",
        "max_grad_norm": ">=0",
        "log_every": ">=1",
        "checkpoint_every": ">=0",
        "checkpoints_total_limit": ">=0",
    }

    output_dir: str = "runs/train"
    base_model: str = ""  # hub id or local path of the model being fine-tuned
    seed: int = 0
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 1  # per process
    gradient_accumulation_steps: int = 1
    lr: float = 1e-5  # peak learning rate
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes, pip extra `lowmem`; icthp_core.training.optim)
    weight_decay: float = 0.0  # AdamW (decoupled) weight decay
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0  # null or 0: no clipping
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    gradient_checkpointing: bool = False
    trust_pickle: bool = False  # allow reading pickled data (Pick-High .pkl; runs code: trusted files only)
    log_every: int = 10
    checkpoint_every: int = 1000  # 0: only at the end
    checkpoints_total_limit: int | None = 3  # complete checkpoints kept (oldest removed); null: all
    resume: str | None = "auto"  # "auto" (newest complete checkpoint in output_dir), a checkpoint dir, or null
    report_to: str | None = "none"  # accelerate tracker name ("tensorboard", "wandb", "all") or "none"
    plot: bool = True  # draw the curves PNG from metrics.jsonl
    # resuming with options other than the checkpoint's: false = refuse (the message lists them); true = go on with
    # the new values (the differences are printed; lr / weight_decay / betas / eps are applied to the optimizer)
    allow_config_change: bool = False


@dataclass
class RewardTrainConfig(CommonTrainConfig):
    """Options of the reward-model stages (ICT, HP); the common ones are in :class:`CommonTrainConfig`."""

    #: `recipe: NAME` fills every option of that preset first (explicit keys still win); see docs/training.md
    RECIPES: ClassVar[dict[str, dict[str, Any]]] = {}
    #: text options with a fixed set of values (anything else is a one-line ConfigError)
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **CommonTrainConfig.CHOICES,
        "tokenizer": TOKENIZER_NAMES,
        "warmup_type": ("linear", "log"),
        "lr_schedule": ("constant", "cosine", "linear"),
        "best_mode": ("max", "min"),
    }
    RANGES: ClassVar[dict[str, str]] = {
        "warmup_steps": ">=0",
        "eval_every": ">=0",
        "eval_batch_size": ">=1",
        "num_workers": ">=0",
        "export_candidates_every": ">=0",
        "limit_train": ">=1",
        "limit_val": ">=1",
    }
    #: the metrics the stage's validation reports (`best_metric` must be one of them); set by each stage
    VALIDATION_METRICS: ClassVar[tuple[str, ...]] = ()

    recipe: str | None = None  # "paper" | "upstream" (None: only the values given)
    output_dir: str = "runs/stage"
    train_data: str = ""  # triplet table (.jsonl/.csv/.parquet) or Pick-High .pkl (with trust_pickle)
    val_data: str | None = None
    image_root: str | None = None  # base folder for relative image paths (default: the table's folder)
    verify_images: bool = False  # decode every image once at load time (bad ones skipped and reported)
    limit_train: int | None = None
    limit_val: int | None = None
    cache_images: bool = False  # keep preprocessed images in memory (small data sets only)
    # prompt tokenisation for training, validation and ICT labels: "open_clip" (ftfy + HTML unescape, as inference
    # and upstream's eval.py) or "hf" (the HF CLIP fast tokenizer, as upstream's trainer); scoring.text has both
    tokenizer: str = "open_clip"
    base_model: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # hub id or local dir/file of a CLIP
    batch_size: int = 32  # per process
    lr: float = 3e-5
    warmup_steps: int = 500
    warmup_type: str = "linear"  # "linear": (s+1)/W | "log": log(s+1)/log(W) (DeepSpeed WarmupDecayLR, upstream)
    lr_schedule: str = "constant"  # after warmup: "constant" | "cosine" | "linear" (linear decay to 0 at max_steps)
    cpu: bool = False  # force CPU (several CPU processes under `accelerate launch` use gloo)
    num_workers: int = 2
    eval_every: int = 500  # 0: only at the end
    eval_batch_size: int = 64
    best_metric: str | None = None  # validation metric selecting the exported model (None: the last step)
    best_mode: str = "max"  # "max" | "min"
    # with best_metric: only validation steps that are multiples of this (and the last step) may be exported;
    # 0: every validation step. Such steps are validated even when eval_every does not divide them (upstream HP: 5000)
    export_candidates_every: int = 0
    report_to: str | None = "tensorboard"
    debug_crash_at_step: int | None = None  # testing: hard-exit (as if killed) after this optimizer step


def _coerce(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """Check option names and convert values to the field types (YAML reads `1e-3` as a string); options listed in
    `cls.CHOICES` must take one of their values."""
    choices: dict[str, tuple[str, ...]] = getattr(cls, "CHOICES", None) or {}
    all_hints = typing.get_type_hints(cls)
    hints = {f.name: all_hints[f.name] for f in dataclasses.fields(cls)}
    for k in data:
        if k not in hints and k in RENAMED and RENAMED[k] in hints:
            raise ConfigError(f"{where}: option {k!r} was renamed to {RENAMED[k]!r}")
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown} for {cls.__name__}; valid: {sorted(hints)}")
    out = {}
    for k, v in data.items():
        hint = hints[k]
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        args = set(typing.get_args(hint)) if union else {hint}
        origins = {typing.get_origin(a) or a for a in args}
        try:
            if k == "resume" and isinstance(v, bool):
                v = "auto" if v else None  # `resume: true/false` reads naturally
            elif k == "mixed_precision" and v is False:
                v = "no"  # YAML 1.1 reads an unquoted `no` as false
            elif v is None or type(v) in args:
                pass
            elif float in args and isinstance(v, str | int) and not isinstance(v, bool):
                v = float(v)
            elif int in args and isinstance(v, str):
                v = int(v)
            elif tuple in origins and isinstance(v, list):
                v = tuple(v)
            elif origins & {list, dict, tuple} and not isinstance(v, list | dict | tuple):
                raise ValueError
            elif bool in args and not isinstance(v, bool):
                raise ValueError
        except ValueError:
            kind = hints[k].__name__ if type(hints[k]) is type else str(hints[k]).replace("typing.", "")
            raise ConfigError(f"{where}: option {k}={v!r} is not a valid {kind}") from None
        if k in choices and v not in choices[k]:
            raise ConfigError(f"{where}: option {k}={v!r}: expected one of {', '.join(choices[k])}")
        out[k] = v
    return out


def load_config(cls: type, path: str | os.PathLike | None = None, values: dict[str, Any] | None = None):
    """Build `cls` from a YAML file and overriding `values` (the command line's `key=value` options).

    If the result names a `recipe` and `cls.RECIPES` has it, the recipe's values come first and every key given
    in the file or in `values` overrides them. Any bad name or value is a one-line `ConfigError`."""
    import yaml

    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        except OSError as e:
            raise ConfigError(f"--config {path}: {e.strerror or e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(loaded).__name__}")
        data.update(_coerce(cls, loaded, str(path)))
    for k, v in (values or {}).items():
        data.update(_coerce(cls, {k: v}, "command line"))
    recipes = getattr(cls, "RECIPES", None) or {}
    recipe = data.get("recipe")
    if recipe is not None and recipes:
        if recipe not in recipes:
            raise ConfigError(f"recipe={recipe!r}: expected one of {sorted(recipes)}")
        data = {**_coerce(cls, recipes[recipe], f"recipe {recipe}"), **data}
    from icthp_core.training.config_check import check_config

    cfg = cls(**data)
    where = " + ".join(x for x in (str(path) if path else "", "command line" if values else "") if x)
    check_config(cfg, where or "config")
    return cfg


def config_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
