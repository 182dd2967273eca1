"""BLIP-based reward models on transformers' BLIP classes: ImageReward v1.0, BLIP ITC and BLIP ITM.

- ImageReward (THUDM/ImageReward, `ImageReward.pt` + `med_config.json`): BLIP ViT-L/16 image tokens -> BERT with
  cross-attention over them ([CLS]-led prompt, max 35 tokens) -> [CLS] state -> 5-Linear head -> z-normalised
  with ImageReward's constants. Keys are converted strictly onto `BlipVisionModel` + `BlipTextModel`.
- BLIP ITC / ITM (`Salesforce/blip-itm-large-coco`, transformers `BlipForImageTextRetrieval`): ITC = cosine of the
  projected [CLS] features (text without the image); ITM = softmax(itm_head)[:, 1] of the prompt attending to the
  image tokens, `[ENC]` first (`blip_itm`, as BLIP's retrieval training) or `[CLS]` first (`blip_itm_cls`, as
  BLIP's `blip_itm.py` and transformers' `BlipProcessor`).
- BLIP pretrain ITC (`blip_pretrain_itc`): ImageReward's BLIP baseline (`BLIPScore.py`): BLIP's *pretrain* ViT-L
  checkpoint `model_large.pth` at 224 px (ImageReward's Resize + CenterCrop), cosine of the projected [CLS]
  features of the text-only BERT and the image.

Each model carries its tokenizer (`tokenize`) and preprocessing mode; `encode_text` output is what the scorer
caches per prompt (token ids + mask where the text must meet the image, projected features for ITC).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from icthp_core.checkpoints.files import load_state_dict
from icthp_core.checkpoints.hub import ensure_available, resolve_file
from icthp_core.checkpoints.loading import parse_device, parse_dtype
from icthp_core.data.prompts import check_prompt
from icthp_core.errors import CheckpointError
from icthp_core.scoring.models import HPHead

IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
IMAGEREWARD_MAX_LENGTH = 35
IMAGEREWARD_FILES = ("ImageReward.pt",)
MED_CONFIG = ("med_config.json",)
BERT_TOKENIZER = "google-bert/bert-base-uncased"
BLIP_MAX_LENGTH = 35  # BLIP's retrieval models truncate prompts at 35 tokens too

__all__ = [
    "ImageRewardModel",
    "BlipITCModel",
    "BlipITMModel",
    "BlipPretrainITCModel",
    "convert_blip_pretrain_state_dict",
    "BLIP_PRETRAIN_FILES",
    "blip_tokenizer",
    "convert_imagereward_state_dict",
    "IMAGEREWARD_MEAN",
    "IMAGEREWARD_STD",
]


def blip_tokenizer(source: str | os.PathLike = BERT_TOKENIZER):
    """BLIP's tokenizer: BERT uncased + `[DEC]` as bos token + `[ENC]` as additional special token (vocab 30524).

    `source`: a folder with the BERT vocabulary (`vocab.txt`) or a hub id (default `bert-base-uncased`).
    """
    from transformers import BertTokenizer

    ensure_available(source, "vocab.txt")
    tok = BertTokenizer.from_pretrained(os.fspath(source))
    if tok.bos_token != "[DEC]":
        tok.add_special_tokens({"bos_token": "[DEC]"})
    if "[ENC]" not in tok.all_special_tokens:
        tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.convert_tokens_to_ids("[ENC]")
    return tok


def _encode(tok, prompts: Sequence[str], max_length: int, enc_first: bool = False) -> torch.Tensor:
    """Token ids and attention mask stacked as [B, 2, max_length] (long); [CLS] or [ENC] at position 0."""
    if isinstance(prompts, str):
        prompts = [prompts]
    for i, p in enumerate(prompts):
        check_prompt(p, f"prompts[{i}]")
    enc = tok(list(prompts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    ids = enc["input_ids"].clone()
    if enc_first:
        ids[:, 0] = tok.enc_token_id
    return torch.stack([ids, enc["attention_mask"]], dim=1)


# ----------------------------------------------------------------------------------------------- key conversion

_VIT_RULES = (
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.(weight|bias)$", r"embeddings.patch_embedding.\1"),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.layers.\1.layer_norm1."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.layers.\1.layer_norm2."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"encoder.layers.\1.self_attn.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"encoder.layers.\1.self_attn.projection."),
    (r"^blocks\.(\d+)\.mlp\.(fc1|fc2)\.", r"encoder.layers.\1.mlp.\2."),
    (r"^norm\.(weight|bias)$", r"post_layernorm.\1"),
)
#: tensors of ImageReward.pt that the score does not use (BLIP's contrastive projections, a position-id buffer)
IMAGEREWARD_UNUSED = re.compile(r"^blip\.(vision_proj|text_proj)\.|^blip\.text_encoder\.embeddings\.position_ids$")


def _vit_key(key: str) -> str | None:
    for pattern, repl in _VIT_RULES:
        if re.search(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def convert_imagereward_state_dict(
    sd: dict[str, torch.Tensor], file: str | os.PathLike = "ImageReward.pt"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split an ImageReward state dict into (vision, text, head) dicts in transformers/HPHead key names.

    Every tensor is either converted or known to be unused (IMAGEREWARD_UNUSED); anything else is an error.
    """
    vision, text, head, unknown = {}, {}, {}, []
    for key, value in sd.items():
        if key.startswith("blip.visual_encoder."):
            new = _vit_key(key[len("blip.visual_encoder.") :])
            if new is None:
                unknown.append(key)
            else:
                vision[new] = value
        elif IMAGEREWARD_UNUSED.search(key):
            continue
        elif key.startswith("blip.text_encoder."):
            text[key[len("blip.text_encoder.") :]] = value
        elif key.startswith("mlp."):
            head[key[len("mlp.") :]] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{file}: unexpected ImageReward keys {sorted(unknown)[:10]} ({len(unknown)} in all)")
    return vision, text, head


def _load_strict(module: nn.Module, sd: dict[str, torch.Tensor], file, part: str) -> None:
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise CheckpointError(f"{file}: {part}: missing keys {missing[:10]}, unexpected keys {unexpected[:10]}")
    try:
        module.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{file}: {part}: {e}") from e


def _vision_config(vision: dict[str, torch.Tensor], file):
    """BLIP ViT config from the weight shapes (heads = width / 64, as BLIP's ViT-B and ViT-L); eps 1e-6."""
    from transformers import BlipVisionConfig

    try:
        width = vision["embeddings.class_embedding"].shape[-1]
        patch = vision["embeddings.patch_embedding.weight"].shape[-1]
        n_pos = vision["embeddings.position_embedding"].shape[1] - 1
        depth = 1 + max(int(k.split(".")[2]) for k in vision if k.startswith("encoder.layers."))
        mlp = vision["encoder.layers.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{file}: not a BLIP vision encoder (missing {e})") from None
    side = round(n_pos**0.5)
    return BlipVisionConfig(
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=depth,
        num_attention_heads=max(1, width // 64),
        image_size=side * patch,
        patch_size=patch,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
    )


def _text_config(med: dict, encoder_width: int):
    from transformers import BlipTextConfig

    return BlipTextConfig(
        vocab_size=med["vocab_size"],
        hidden_size=med["hidden_size"],
        encoder_hidden_size=encoder_width,
        intermediate_size=med["intermediate_size"],
        num_hidden_layers=med["num_hidden_layers"],
        num_attention_heads=med["num_attention_heads"],
        max_position_embeddings=med["max_position_embeddings"],
        hidden_act=med.get("hidden_act", "gelu"),
        layer_norm_eps=med.get("layer_norm_eps", 1e-12),
        pad_token_id=med.get("pad_token_id", 0),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        is_decoder=True,  # builds the cross-attention layers; forward runs bidirectional (is_decoder=False)
    )


# ----------------------------------------------------------------------------------------------- models


class ImageRewardModel(nn.Module):
    """ImageReward v1.0: z-normalised reward (about -2..2; higher = preferred), differentiable in the pixels."""

    needs_prompt = True
    preprocess_mode = "imagereward"

    def __init__(self, vision: nn.Module, text: nn.Module, head: HPHead, tokenizer, max_length: int = 35):
        super().__init__()
        self.vision, self.text, self.head = vision, text, head
        self.tokenizer = tokenizer
        self.max_length = max_length

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """[B, 2, 35]: ids ([CLS] first) and attention mask, as ImageReward's `BertTokenizer` call."""
        return _encode(self.tokenizer, prompts, self.max_length)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixels).last_hidden_state  # all image tokens

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens  # the text meets the image inside the encoder: only the tokens can be cached

    def score_features(self, image_embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(image_embeds.device)
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = self.text(
            input_ids=tokens[:, 0],
            attention_mask=tokens[:, 1],
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=atts,
        ).last_hidden_state[:, 0]
        r = self.head(out.to(next(self.head.parameters()).dtype)).squeeze(-1).float()
        return (r - IMAGEREWARD_MEAN) / IMAGEREWARD_STD

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.score_features(self.encode_image(pixels), tokens)

    @classmethod
    def from_pretrained(
        cls, src: str | os.PathLike = "THUDM/ImageReward", device=None, dtype="fp32", tokenizer=None
    ) -> ImageRewardModel:
        """Load `ImageReward.pt` + `med_config.json` (hub repo or folder); strict key conversion.

        Tokenizer: `tokenizer` if given, else a `vocab.txt` in the folder `src`, else `bert-base-uncased`.
        """
        from transformers import BlipTextModel, BlipVisionModel

        device, dtype = parse_device(device), parse_dtype(dtype)
        weights = resolve_file(src, IMAGEREWARD_FILES)
        med = json.loads(Path(resolve_file(src, MED_CONFIG)).read_text())
        vision_sd, text_sd, head_sd = convert_imagereward_state_dict(load_state_dict(weights), weights)
        vision = BlipVisionModel(_vision_config(vision_sd, weights))
        _load_strict(vision, vision_sd, weights, "visual encoder")
        text = BlipTextModel(_text_config(med, vision.config.hidden_size), add_pooling_layer=False)
        _load_strict(text, text_sd, weights, "text encoder")
        head = HPHead.from_state_dict(head_sd, weights)
        if tokenizer is None:
            local = Path(os.fspath(src))
            tokenizer = local if (local.is_dir() and (local / "vocab.txt").is_file()) else BERT_TOKENIZER
        tok = blip_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer  # str has .encode
        model = cls(vision, text, head, tok, IMAGEREWARD_MAX_LENGTH)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class _BlipRetrieval(nn.Module):
    needs_prompt = True
    preprocess_mode = "blip"

    def __init__(self, model: nn.Module, tokenizer, max_length: int = BLIP_MAX_LENGTH):
        super().__init__()
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixels).last_hidden_state

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.score_features(self.encode_image(pixels), self.encode_text(tokens))

    @classmethod
    def from_pretrained(cls, src: str | os.PathLike = "Salesforce/blip-itm-large-coco", device=None, dtype="fp32"):
        """A transformers `BlipForImageTextRetrieval` folder or hub id (weights + tokenizer); missing keys fail."""
        from transformers import BlipForImageTextRetrieval

        device, dtype = parse_device(device), parse_dtype(dtype)
        ensure_available(src, "config.json")
        try:
            model, info = BlipForImageTextRetrieval.from_pretrained(os.fspath(src), output_loading_info=True)
        except OSError as e:
            raise CheckpointError(f"{src}: cannot load a BLIP retrieval model ({e})") from e
        if info.get("missing_keys"):
            raise CheckpointError(f"{src}: missing keys {sorted(info['missing_keys'])[:10]}")
        tok = blip_tokenizer(src)
        return cls(model, tok).to(device=device, dtype=dtype).eval().requires_grad_(False)


class BlipITCModel(_BlipRetrieval):
    """BLIP image-text contrastive score: cosine of the projected [CLS] features, in [-1, 1]."""

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return _encode(self.tokenizer, prompts, self.max_length)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        m = self.model
        out = m.text_encoder(input_ids=tokens[:, 0], attention_mask=tokens[:, 1]).last_hidden_state[:, 0]
        return F.normalize(m.text_proj(out), dim=-1)

    def score_features(self, image_embeds: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.model.vision_proj(image_embeds[:, 0]), dim=-1)
        return (img.float() * text_features.to(img.device).float()).sum(-1)


class BlipITMModel(_BlipRetrieval):
    """BLIP image-text matching score: probability of "match", in [0, 1]; `[ENC]` first (BLIP's retrieval training)."""

    enc_first = True

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return _encode(self.tokenizer, prompts, self.max_length, enc_first=self.enc_first)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def score_features(self, image_embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        m, tokens = self.model, tokens.to(image_embeds.device)
        atts = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        out = m.text_encoder(
            input_ids=tokens[:, 0],
            attention_mask=tokens[:, 1],
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=atts,
        ).last_hidden_state[:, 0]
        return torch.softmax(m.itm_head(out).float(), dim=-1)[:, 1]


class BlipITMClsModel(BlipITMModel):
    """BLIP ITM with `[CLS]` first, as BLIP's `blip_itm.py` and transformers' `BlipProcessor` feed the model."""

    enc_first = False


# ----------------------------------------------------------------------------------------------- BLIP pretrain

BLIP_PRETRAIN_FILES = ("model_large.pth", "model_base.pth")
#: tensors of a BLIP pretrain checkpoint the ITC score does not use (momentum encoders, queues, ITM head, decoder)
BLIP_PRETRAIN_UNUSED = re.compile(
    r"^(visual_encoder_m|text_encoder_m|vision_proj_m|text_proj_m|itm_head|text_decoder)\.|"
    r"^(image_queue|text_queue|idx_queue|ptr_queue|temp)$|^text_encoder\.embeddings\.position_ids$"
)


def convert_blip_pretrain_state_dict(
    sd: dict[str, torch.Tensor], file: str | os.PathLike = "model_large.pth"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a BLIP pretrain state dict into (vision, text, projections) in transformers / Linear key names.

    Every tensor is converted or known to be unused (BLIP_PRETRAIN_UNUSED); anything else is an error.
    """
    vision, text, proj, unknown = {}, {}, {}, []
    for key, value in sd.items():
        if BLIP_PRETRAIN_UNUSED.search(key):
            continue
        if key.startswith("visual_encoder."):
            new = _vit_key(key[len("visual_encoder.") :])
            if new is None:
                unknown.append(key)
            else:
                vision[new] = value
        elif key.startswith("text_encoder."):
            text[key[len("text_encoder.") :]] = value
        elif key.startswith(("vision_proj.", "text_proj.")):
            proj[key] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{file}: unexpected BLIP pretrain keys {sorted(unknown)[:10]} ({len(unknown)} in all)")
    return vision, text, proj


def _med_from_shapes(text: dict[str, torch.Tensor], file) -> dict:
    """BERT config of a BLIP text encoder from its weight shapes (heads = width / 64, as BERT-base)."""
    try:
        vocab, width = text["embeddings.word_embeddings.weight"].shape
        layers = 1 + max(int(k.split(".")[2]) for k in text if k.startswith("encoder.layer."))
        return {
            "vocab_size": vocab,
            "hidden_size": width,
            "num_hidden_layers": layers,
            "num_attention_heads": max(1, width // 64),
            "intermediate_size": text["encoder.layer.0.intermediate.dense.weight"].shape[0],
            "max_position_embeddings": text["embeddings.position_embeddings.weight"].shape[0],
        }
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{file}: not a BLIP text encoder (missing {e})") from None


class BlipPretrainITCModel(nn.Module):
    """ImageReward's BLIP baseline: cosine of BLIP pretrain's projected [CLS] text and image features, in [-1, 1]."""

    needs_prompt = True
    preprocess_mode = "imagereward"  # Resize(224, bicubic) + CenterCrop(224), OpenAI mean/std: BLIPScore's _transform

    def __init__(self, vision: nn.Module, text: nn.Module, vision_proj: nn.Linear, text_proj: nn.Linear, tokenizer):
        super().__init__()
        self.vision, self.text, self.vision_proj, self.text_proj = vision, text, vision_proj, text_proj
        self.tokenizer = tokenizer

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return _encode(self.tokenizer, prompts, BLIP_MAX_LENGTH)  # [CLS] first, 35 tokens, as BLIPScore

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixels).last_hidden_state

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.text(input_ids=tokens[:, 0], attention_mask=tokens[:, 1]).last_hidden_state[:, 0]
        return F.normalize(self.text_proj(out), dim=-1)  # text only: no cross-attention (BLIP's mode='text')

    def score_features(self, image_embeds: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)
        return (img.float() * text_features.to(img.device).float()).sum(-1)

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.score_features(self.encode_image(pixels), self.encode_text(tokens))

    @classmethod
    def from_pretrained(cls, src: str | os.PathLike | None, device=None, dtype="fp32", tokenizer=None):
        """BLIP's pretrain checkpoint (`model_large.pth`, `{"model": state dict}`): a file or a folder holding it
        (with `med_config.json` and `vocab.txt` if present; else the config from the shapes, bert-base-uncased)."""
        from transformers import BlipTextModel, BlipVisionModel

        if src is None:
            raise CheckpointError(
                "blip_pretrain_itc: no default weights; give --source blip_pretrain_itc=PATH to BLIP's pretrain "
                "checkpoint model_large.pth (https://storage.googleapis.com/sfr-vision-language-research/BLIP/"
                "models/model_large.pth, the file ImageReward's BLIP baseline loads)"
            )
        device, dtype = parse_device(device), parse_dtype(dtype)
        weights = resolve_file(src, BLIP_PRETRAIN_FILES)
        vision_sd, text_sd, proj = convert_blip_pretrain_state_dict(
            load_state_dict(weights, nested_key="model"), weights
        )
        vision = BlipVisionModel(_vision_config(vision_sd, weights))
        _load_strict(vision, vision_sd, weights, "visual encoder")
        folder = Path(weights).parent
        med_file = folder / MED_CONFIG[0]
        med = json.loads(med_file.read_text()) if med_file.is_file() else _med_from_shapes(text_sd, weights)
        text = BlipTextModel(_text_config(med, vision.config.hidden_size), add_pooling_layer=False)
        _load_strict(text, text_sd, weights, "text encoder")
        linears = []
        for name in ("vision_proj", "text_proj"):
            w, b = proj.get(f"{name}.weight"), proj.get(f"{name}.bias")
            if w is None or b is None:
                raise CheckpointError(f"{weights}: missing keys ['{name}.weight', '{name}.bias']")
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.load_state_dict({"weight": w, "bias": b})
            linears.append(lin)
        if tokenizer is None:
            tokenizer = folder if (folder / "vocab.txt").is_file() else BERT_TOKENIZER
        tok = tokenizer if hasattr(tokenizer, "encode") else blip_tokenizer(tokenizer)
        model = cls(vision, text, *linears, tok)
        return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
