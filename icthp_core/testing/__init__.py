"""Testing helpers: tiny random models saved in the published layouts, tiny diffusion pipelines, toy data sets.

Used by the test suite, the benchmarks and the GPU check; nothing here downloads anything."""

from icthp_core.testing.tiny import (
    TINY_CLIP,
    save_tiny_clip,
    save_tiny_hp,
    save_tiny_ict,
    tiny_clip_config,
    tiny_head,
    tiny_hf_clip,
)

__all__ = [
    "TINY_CLIP",
    "save_tiny_clip",
    "save_tiny_hp",
    "save_tiny_ict",
    "tiny_clip_config",
    "tiny_head",
    "tiny_hf_clip",
]
