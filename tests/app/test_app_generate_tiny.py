"""Tab 3's Generator against a real (tiny, random) diffusers SD3 pipeline and a LoRA saved with
diffusers' `save_lora_weights`, on CPU: the base image equals a LoRA-free pipeline's output for the same
seed, the LoRA image differs, and the pipeline loads once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")

# 2.8 s: the fast tier checks the Generator with a fake pipeline (test_app_parts.py); this real one is in the full tier
pytestmark = [pytest.mark.slow]


def _tiny_lora(base_dir, path):
    """A random LoRA on the tiny SD3 transformer's attention, saved with diffusers' `save_lora_weights`."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(1)
    t = SD3Transformer2DModel.from_pretrained(base_dir, subfolder="transformer")
    t.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    layers = get_peft_model_state_dict(t)
    StableDiffusion3Pipeline.save_lora_weights(path.parent, transformer_lora_layers=layers, weight_name=path.name)
    return path


def test_generator_with_real_tiny_sd3_and_lora(tiny_pipeline_dirs, tmp_path):
    from icthp_app.generate import Generator

    base_dir = tiny_pipeline_dirs["sd3"]  # the session's tiny SD3 (icthp_core.testing.diffusion)
    lora = _tiny_lora(base_dir, tmp_path / "lora" / "tiny_lora.safetensors")
    gen = Generator(str(base_dir), str(lora), device="cpu", dtype="fp32")
    base, with_lora = gen.generate("a red balloon", seed=3, steps=2, guidance=1.0, size=16)
    assert base.size == (16, 16)

    ref_pipe = diffusers.DiffusionPipeline.from_pretrained(base_dir, dtype=torch.float32)
    ref_pipe.set_progress_bar_config(disable=True)
    ref = ref_pipe(
        prompt="a red balloon", num_inference_steps=2, guidance_scale=1.0, height=16, width=16,
        generator=torch.Generator("cpu").manual_seed(3),
    ).images[0]  # fmt: skip
    np.testing.assert_array_equal(np.asarray(base), np.asarray(ref))
    assert np.abs(np.asarray(with_lora, dtype=int) - np.asarray(base, dtype=int)).max() > 0
    again_base, again_lora = gen.generate("a red balloon", seed=3, steps=2, guidance=1.0, size=16)
    np.testing.assert_array_equal(np.asarray(again_lora), np.asarray(with_lora))
    assert gen.pipeline() is gen.pipeline()
