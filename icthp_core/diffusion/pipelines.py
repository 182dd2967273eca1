"""Loading the diffusers SD3 / FLUX pipelines that DRaFT trains and `icthp evalgen` samples from."""

from __future__ import annotations

import torch

from icthp_core.errors import ConfigError

#: the paper's sampling defaults per architecture (§4.3, A.2): SD3.5 8 steps with K=3, FLUX 4 steps with K=1
ARCH_DEFAULTS = {"sd3": {"num_steps": 8, "k": 3}, "flux": {"num_steps": 4, "k": 1}}

TEXT_COMPONENTS = ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")


def pipeline_info(base_model: str) -> tuple[str, bool]:
    """(arch, guidance_embeds) of a diffusers pipeline from its configs only (nothing big is loaded)."""
    from diffusers import DiffusionPipeline, FluxTransformer2DModel

    from icthp_core.checkpoints.hub import ensure_available

    ensure_available(base_model, "model_index.json")  # one line, in seconds, when the hub cannot be reached
    name = DiffusionPipeline.load_config(base_model)["_class_name"]
    if name.startswith("StableDiffusion3"):
        return "sd3", False
    if name.startswith("Flux"):
        tcfg = FluxTransformer2DModel.load_config(base_model, subfolder="transformer")
        return "flux", bool(tcfg.get("guidance_embeds", False))
    raise ConfigError(f"{base_model}: pipeline {name} is not an SD3 / FLUX pipeline")


def load_pipeline(base_model: str, dtype: torch.dtype, text: bool = True, denoiser: bool = True):
    """The pipeline with frozen eval components; `text=False` skips the text encoders, `denoiser=False` the
    transformer and VAE."""
    from diffusers import DiffusionPipeline

    from icthp_core.checkpoints.hub import ensure_available

    ensure_available(base_model, "model_index.json")
    index = DiffusionPipeline.load_config(base_model)
    kwargs = {k: None for k in TEXT_COMPONENTS if k in index and not text}
    kwargs.update({k: None for k in ("transformer", "vae") if not denoiser})

    pipe = DiffusionPipeline.from_pretrained(base_model, dtype=dtype, **kwargs)
    for c in pipe.components.values():
        if isinstance(c, torch.nn.Module):
            c.eval().requires_grad_(False)
    return pipe
