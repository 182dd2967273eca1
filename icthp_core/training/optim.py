"""The optimizer of every training job (reward stages and DRaFT): `optimizer: adamw | adamw8bit`.

`adamw8bit` is bitsandbytes' blockwise 8-bit AdamW (Dettmers et al. 2022), the memory option diffusers' LoRA
scripts (`--use_8bit_adam`), kohya sd-scripts (`optimizer_type=AdamW8bit`) and SimpleTuner offer: both moments are
stored in uint8 with one fp32 scale per block of 256 values, about 2 bytes of state per parameter instead of 8.
Tensors smaller than :data:`MIN_8BIT_SIZE` keep fp32 moments (bitsandbytes' default). Its `state_dict()` holds
only tensors and numbers, so checkpoints load with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from icthp_core.errors import ConfigError
from icthp_core.training.config import CommonTrainConfig

__all__ = ["OPTIMIZERS", "MIN_8BIT_SIZE", "make_optimizer", "optimizer_from_config"]

OPTIMIZERS = CommonTrainConfig.CHOICES["optimizer"]
#: parameters with fewer elements keep fp32 moments in bitsandbytes' 8-bit optimizers (its default, 4096)
MIN_8BIT_SIZE = 4096


def make_optimizer(
    name: str,
    params: Iterable[torch.nn.Parameter],
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """`torch.optim.AdamW` (`adamw`) or `bitsandbytes.optim.AdamW8bit` (`adamw8bit`) with the same hyper-parameters."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
    if name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError(
                "optimizer=adamw8bit needs bitsandbytes: pip install 'icthp[lowmem]' (or optimizer=adamw)"
            ) from None
        return bnb.optim.AdamW8bit(
            params, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps, min_8bit_size=MIN_8BIT_SIZE
        )
    raise ConfigError(f"optimizer={name!r}: expected one of {', '.join(OPTIMIZERS)}")


def optimizer_from_config(cfg: CommonTrainConfig, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer a training config asks for (`optimizer`, `lr`, `adam_beta1/2`, `adam_eps`, `weight_decay`)."""
    return make_optimizer(
        cfg.optimizer,
        params,
        lr=cfg.lr,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        weight_decay=cfg.weight_decay,
        eps=cfg.adam_eps,
    )
