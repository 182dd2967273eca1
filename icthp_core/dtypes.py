"""The one parser of dtype names (`--dtype`, config files, ComfyUI dropdowns)."""

from __future__ import annotations

import torch

from icthp_core.errors import ConfigError

#: accepted names; "no" is accelerate's mixed-precision value for full precision
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "no": torch.float32,
}


def parse_dtype(dtype: str | torch.dtype | None, where: str = "dtype") -> torch.dtype:
    """`"fp32" | "fp16" | "bf16"` (or float32/float16/bfloat16, or a torch.dtype; None = fp32) to a torch.dtype."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(f"{where}={dtype!r}: expected one of fp32, fp16, bf16") from None
