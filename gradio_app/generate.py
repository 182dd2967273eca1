"""Tab 3: generate with a diffusers base pipeline and with the same pipeline + a LoRA, from one seed."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

ADAPTER = "icthp"


def requirements_missing(base_model: str | None, lora: str | None, cuda: bool | None = None) -> list[str]:
    """What is missing for generation (empty list = ready)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    missing = []
    if not cuda:
        missing.append("a CUDA GPU (none is visible to PyTorch in this process)")
    if not base_model:
        missing.append("diffusers base weights: start with `--base-model <hub id or local diffusers folder>`")
    if not lora:
        missing.append("a LoRA file: start with `--lora <file.safetensors>` (e.g. from `train/draft_lora.py`)")
    elif not Path(lora).is_file():
        missing.append(f"the LoRA file {lora} (not found)")
    return missing


def explanation(missing: list[str]) -> str:
    items = "\n".join(f"- {m}" for m in missing)
    return (
        "### Generation is not available here\n"
        "This tab generates one image with the base pipeline and one with the base + LoRA "
        "from the same seed, then scores both. It needs:\n"
        f"{items}\n\nExample: `icthp app --base-model stabilityai/stable-diffusion-3.5-medium "
        "--lora runs/draft/lora.safetensors` on a machine with a GPU."
    )


def _load_pipeline(base_model: str, lora: str, device: str, dtype: str) -> Any:
    from diffusers import DiffusionPipeline

    from icthp_core.checkpoints.hub import ensure_available
    from icthp_core.dtypes import parse_dtype

    ensure_available(base_model, "model_index.json")
    torch_dtype = parse_dtype(dtype)
    pipe = DiffusionPipeline.from_pretrained(base_model, dtype=torch_dtype)
    pipe.load_lora_weights(lora, adapter_name=ADAPTER)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


class Generator:
    """Holds one pipeline per process (loaded on first use) with the LoRA attached as an adapter."""

    def __init__(
        self,
        base_model: str,
        lora: str,
        device: str = "cuda",
        dtype: str = "bf16",
        loader: Callable[[str, str, str, str], Any] | None = None,
    ) -> None:
        self.base_model, self.lora, self.device, self.dtype = base_model, lora, device, dtype
        self._loader = loader or _load_pipeline
        self._pipe: Any = None
        self._lock = threading.Lock()

    def pipeline(self) -> Any:
        with self._lock:
            if self._pipe is None:
                self._pipe = self._loader(self.base_model, self.lora, self.device, self.dtype)
            return self._pipe

    def generate(
        self, prompt: str, seed: int, steps: int = 28, guidance: float = 4.5, size: int = 1024
    ) -> tuple[Any, Any]:
        """(base image, LoRA image) as PIL, generated from the same seed and settings."""
        import torch

        pipe = self.pipeline()
        out = []
        with self._lock:  # the LoRA switch is pipeline state: one generation at a time
            for use_lora in (False, True):
                if use_lora:
                    pipe.enable_lora()
                else:
                    pipe.disable_lora()
                gen = torch.Generator(device=self.device).manual_seed(int(seed))
                res = pipe(
                    prompt=prompt,
                    num_inference_steps=int(steps),
                    guidance_scale=float(guidance),
                    height=int(size),
                    width=int(size),
                    generator=gen,
                )
                out.append(res.images[0])
            pipe.enable_lora()
        return out[0], out[1]
