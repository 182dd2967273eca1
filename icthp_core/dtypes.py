"""The one list and parser of dtype names (`--dtype`, config files, ComfyUI dropdowns).

Importing it does not import torch (the CLI's option choices come from here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from icthp_core.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: the names every front end offers (choices, dropdowns), full precision first
DTYPE_CHOICES = ("fp32", "fp16", "bf16")
DEFAULT_DTYPE = "fp32"
#: every accepted name -> torch dtype attribute; "no" is accelerate's mixed-precision value for full precision
DTYPE_NAMES: dict[str, str] = {
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "no": "float32",
}


def __getattr__(name: str):
    """`DTYPES` (name -> torch.dtype), built on first use."""
    if name == "DTYPES":
        import torch

        return {k: getattr(torch, v) for k, v in DTYPE_NAMES.items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_dtype(dtype: str | torch.dtype | None, where: str = "dtype") -> torch.dtype:
    """`"fp32" | "fp16" | "bf16"` (or float32/float16/bfloat16, or a torch.dtype; None = fp32) to a torch.dtype."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return getattr(torch, DTYPE_NAMES[str(dtype).lower()])
    except KeyError:
        raise ConfigError(f"{where}={dtype!r}: expected one of {', '.join(DTYPE_CHOICES)}") from None
