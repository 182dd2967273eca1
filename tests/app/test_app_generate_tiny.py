"""Tab 3's Generator against a real (tiny, random) diffusers SD3 pipeline and a LoRA saved with
diffusers' `save_lora_weights`, on CPU: the base image equals a LoRA-free pipeline's output for the same
seed, the LoRA image differs, and the pipeline loads once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
peft = pytest.importorskip("peft")


def _clip_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    st = SimpleTokenizer()
    merges = [tuple(m) for m, _ in sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])]
    special = {"bos_token": "<start_of_text>", "eos_token": "<end_of_text>", "unk_token": "<end_of_text>"}
    return CLIPTokenizer(
        vocab=dict(st.encoder), merges=merges, model_max_length=77, pad_token="<end_of_text>", **special
    )


def _tiny_sd3(out_dir):
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32, out_channels=4,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=4,
        norm_num_groups=1, down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
        use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        projection_dim=16, max_position_embeddings=77, eos_token_id=49407, bos_token_id=49406, pad_token_id=49407,
    )  # fmt: skip
    tok = _clip_tokenizer()
    t5_vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    t5_vocab += [(c, -2.0 - i) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")]
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=CLIPTextModelWithProjection(cfg),
        tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(cfg),
        tokenizer_2=tok,
        text_encoder_3=T5EncoderModel(
            T5Config(vocab_size=len(t5_vocab), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
        ),
        tokenizer_3=T5TokenizerFast(vocab=t5_vocab, extra_ids=0, model_max_length=256),
    )
    pipe.save_pretrained(out_dir)
    return pipe


def _tiny_lora(pipe, path):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(1)
    t = pipe.transformer
    t.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    layers = get_peft_model_state_dict(t)
    type(pipe).save_lora_weights(path.parent, transformer_lora_layers=layers, weight_name=path.name)
    t.delete_adapters("default")
    return path


def test_generator_with_real_tiny_sd3_and_lora(tmp_path):
    from icthp_app.generate import Generator

    base_dir = tmp_path / "sd3"
    pipe = _tiny_sd3(base_dir)
    lora = _tiny_lora(pipe, tmp_path / "lora" / "tiny_lora.safetensors")
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
