"""What the CPU offers for half-precision inference (AVX512-BF16, AMX), read from /proc/cpuinfo and torch."""

from __future__ import annotations

import os
from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_features() -> dict[str, bool | int | str]:
    """{'avx512_bf16', 'amx_bf16', 'avx512f', 'cores', 'torch_isa'}: native bf16 matrix support of this CPU.

    `torch_isa` is the instruction set torch's CPU kernels dispatch to (e.g. 'AVX512', 'AVX2', 'DEFAULT').
    """
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    isa = "unknown"
    try:
        import torch

        isa = torch.backends.cpu.get_cpu_capability()
    except Exception:
        pass
    return {
        "avx512f": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx_bf16": "amx_bf16" in flags,
        "cores": os.cpu_count() or 1,
        "torch_isa": isa,
    }


def native_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX): bf16 inference is then fast."""
    f = cpu_features()
    return bool(f["avx512_bf16"] or f["amx_bf16"])
