"""Tiny random BLIP-family models in their published layouts (ImageReward, BLIP retrieval), for tests and demos."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from icthp_core.checkpoints.files import save_state_dict

#: a small uncased WordPiece vocabulary (BERT's special tokens first); the real one is bert-base-uncased's
TINY_BERT_WORDS = (
    "[PAD] [UNK] [CLS] [SEP] [MASK] a an the of in on with and photo picture cat dog red blue green car ferrari "
    "tiny dragon teacup sky sun city night portrait painting art style high quality detailed , . ! ' ##s ##ing "
    "##ed ##ly ##er x y z 1 2 3"
).split()

TINY_MED = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,  # ImageReward's head takes 768 features (fixed in its code)
    "initializer_range": 0.02,
    "intermediate_size": 128,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 64,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 1,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": len(TINY_BERT_WORDS) + 2,  # + [DEC] and [ENC]
    "encoder_width": 128,
    "add_cross_attention": True,
}
#: tiny BLIP ViT: 224 px, patch 32, width 128 (2 heads of 64), 2 blocks
TINY_VIT = {"image_size": 224, "patch_size": 32, "hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 512}


def write_tiny_vocab(directory: str | Path) -> Path:
    """`vocab.txt` of TINY_BERT_WORDS in `directory` (loadable by `BertTokenizer.from_pretrained(directory)`)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(TINY_BERT_WORDS) + "\n")
    return d / "vocab.txt"


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


_VIT_INVERSE = (
    (r"^embeddings\.class_embedding$", "cls_token"),
    (r"^embeddings\.position_embedding$", "pos_embed"),
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^encoder\.layers\.(\d+)\.layer_norm1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.(\d+)\.layer_norm2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.projection\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
    (r"^post_layernorm\.", "norm."),
)


def _to_blip_vit_key(key: str) -> str:
    for pattern, repl in _VIT_INVERSE:
        if re.search(pattern, key):
            return re.sub(pattern, repl, key)
    raise KeyError(key)


def save_tiny_imagereward(directory: str | Path, seed: int = 0) -> Path:
    """A random ImageReward in its published layout: `ImageReward.pt` (its key names), `med_config.json`, plus
    a tiny `vocab.txt` (the real repo has none: the BERT vocabulary comes from bert-base-uncased)."""
    from transformers import BlipTextModel, BlipVisionConfig, BlipVisionModel

    from icthp_core.scoring.blip import _text_config
    from icthp_core.testing.tiny import tiny_head

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vcfg = BlipVisionConfig(num_attention_heads=TINY_VIT["hidden_size"] // 64, layer_norm_eps=1e-6, **TINY_VIT)
    vision = BlipVisionModel(vcfg)
    text = BlipTextModel(_text_config(TINY_MED, vcfg.hidden_size), add_pooling_layer=False)
    _perturb(vision, seed)
    _perturb(text, seed + 1)
    head = tiny_head(TINY_MED["hidden_size"], seed=seed + 2, dims=(64, 16, 8, 4, 1))
    sd = {f"blip.visual_encoder.{_to_blip_vit_key(k)}": v for k, v in vision.state_dict().items()}
    sd.update({f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()})
    sd.update({f"mlp.{k}": v for k, v in head.state_dict().items()})
    sd["blip.vision_proj.weight"] = torch.randn(16, vcfg.hidden_size)  # unused by the score, present in the file
    sd["blip.vision_proj.bias"] = torch.zeros(16)
    save_state_dict(sd, d / "ImageReward.pt")
    (d / "med_config.json").write_text(json.dumps(TINY_MED, indent=2))
    write_tiny_vocab(d)
    return d


def save_tiny_blip_retrieval(directory: str | Path, seed: int = 0) -> Path:
    """A random transformers `BlipForImageTextRetrieval` (384 px, patch 64) + its BLIP tokenizer, saved with
    `save_pretrained` as `Salesforce/blip-itm-large-coco` is published."""
    from transformers import BlipConfig, BlipForImageTextRetrieval

    from icthp_core.scoring.blip import blip_tokenizer

    d = Path(directory)
    write_tiny_vocab(d)
    tok = blip_tokenizer(d)
    torch.manual_seed(seed)
    cfg = BlipConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "encoder_hidden_size": 64,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": tok.bos_token_id,
            "sep_token_id": tok.sep_token_id,
            "pad_token_id": tok.pad_token_id,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 384,
            "patch_size": 64,
            "layer_norm_eps": 1e-5,
        },
        image_text_hidden_size=16,
    )
    model = BlipForImageTextRetrieval(cfg).eval()
    _perturb(model, seed)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d
