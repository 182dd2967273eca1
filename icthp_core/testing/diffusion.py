"""Tiny SD3 / FLUX diffusers pipelines built from configs, with offline tokenizers (tests, `--tiny` smoke runs).

Layouts follow the published pipelines (SD3: two CLIP-with-projection encoders + T5; FLUX: CLIP + T5), only
every width is tiny. Nothing is downloaded: the CLIP tokenizer is rebuilt from open_clip's bundled BPE file and
the T5 tokenizer is a tiny unigram vocabulary.
"""

from __future__ import annotations

import string
from functools import lru_cache
from pathlib import Path

import torch

CLIP_SOT, CLIP_EOT = "<start_of_text>", "<end_of_text>"


@lru_cache(maxsize=1)
def _clip_vocab_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    from open_clip.tokenizer import SimpleTokenizer

    st = SimpleTokenizer()
    merges = [m for m, _ in sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])]
    return dict(st.encoder), merges


def offline_clip_tokenizer():
    """A `transformers.CLIPTokenizer` with the real CLIP vocabulary (49408 ids) built from open_clip's BPE file."""
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_merges()
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=CLIP_SOT,
        eos_token=CLIP_EOT,
        pad_token=CLIP_EOT,
        unk_token=CLIP_EOT,
        model_max_length=77,
    )


def offline_t5_tokenizer():
    """A tiny `T5TokenizerFast` (unigram over single letters and '▁'-prefixed letters, 58 ids)."""
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(c, -1.0) for c in string.ascii_lowercase + string.digits]
    vocab += [("▁" + c, -1.5) for c in string.ascii_lowercase] + [("▁", -2.0)]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=512)


def _clip_text_config(hidden: int, proj: int):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=proj,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_act="gelu",
    )


def _t5(d_model: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=len(offline_t5_tokenizer()),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(cfg)


def _vae(latent_channels: int, blocks: int = 1, shift: float = 0.0609, scale: float = 1.5035):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        latent_channels=latent_channels,
        block_out_channels=(8,) * blocks,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=1,
        norm_num_groups=4,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=shift,
        scaling_factor=scale,
    )


def tiny_sd3_pipeline(seed: int = 0, num_layers: int = 2, vae_blocks: int = 1):
    """A random `StableDiffusion3Pipeline` (SD3.5 layout: qk RMS norm, shift 3.0) small enough for CPU tests."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=num_layers,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        pos_embed_max_size=32,
        qk_norm="rms_norm",
    )
    te1 = CLIPTextModelWithProjection(_clip_text_config(16, 16))
    te2 = CLIPTextModelWithProjection(_clip_text_config(16, 16))
    te3 = _t5(32)
    vae = _vae(4, vae_blocks)
    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    tok = offline_clip_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=sched,
        vae=vae,
        text_encoder=te1,
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tok,
        text_encoder_3=te3,
        tokenizer_3=offline_t5_tokenizer(),
    )
    return _eval(pipe)


def tiny_flux_pipeline(
    seed: int = 0, num_layers: int = 1, num_single_layers: int = 1, vae_blocks: int = 1, guidance_embeds: bool = False
):
    """A random `FluxPipeline` (schnell layout unless `guidance_embeds`) small enough for CPU tests."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )
    te = CLIPTextModel(_clip_text_config(16, 16))
    te2 = _t5(32)
    vae = _vae(4, vae_blocks, shift=0.1159, scale=0.3611)
    sched = FlowMatchEulerDiscreteScheduler(
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=sched,
        vae=vae,
        text_encoder=te,
        tokenizer=offline_clip_tokenizer(),
        text_encoder_2=te2,
        tokenizer_2=offline_t5_tokenizer(),
    )
    return _eval(pipe)


def _eval(pipe):
    for c in pipe.components.values():
        if isinstance(c, torch.nn.Module):
            c.eval()
    return pipe


def save_tiny_pipeline(arch: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny pipeline (`arch` "sd3" or "flux") with `save_pretrained`; loadable with `from_pretrained`."""
    pipe = {"sd3": tiny_sd3_pipeline, "flux": tiny_flux_pipeline}[arch](seed=seed)
    out = Path(out_dir)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


def tiny_sd2_pipeline(text_layers: int = 1, text_hidden: int = 32, text_heads: int = 2, seed: int = 0):
    """A random SD2.x-layout `StableDiffusionPipeline` (CLIPTextModel, SD2.x tokenizer padding with "!" = id 0)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_hidden,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=16,
    )
    cfg = _clip_text_config(text_hidden, text_hidden)
    cfg.num_hidden_layers, cfg.num_attention_heads = text_layers, text_heads
    te = CLIPTextModel(cfg)
    vocab, merges = _clip_vocab_merges()
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=CLIP_SOT,
        eos_token=CLIP_EOT,
        pad_token="!",
        unk_token=CLIP_EOT,
        model_max_length=77,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=te,
        tokenizer=tok,
        unet=unet,
        scheduler=DDIMScheduler(prediction_type="v_prediction", clip_sample=False, steps_offset=1),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    return _eval(pipe)
