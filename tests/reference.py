"""Independent references for parity tests: the upstream definitions written with `transformers.CLIPModel`,
the HF `CLIPImageProcessor` and a HF `CLIPTokenizer` built from the CLIP BPE vocabulary. No icthp_core code."""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

import open_clip
import torch
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

try:  # transformers >= 5: the PIL backend is the one upstream (transformers 4.27) used
    from transformers import CLIPImageProcessorPil as _PilProcessor
except ImportError:  # transformers 4.x: CLIPImageProcessor is PIL-based
    _PilProcessor = CLIPImageProcessor

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


@lru_cache(maxsize=1)
def hf_tokenizer(tmp: str = "/tmp/icthp_ref_tokenizer") -> CLIPTokenizer:
    """HF CLIPTokenizer from open_clip's packaged BPE file (no hub)."""
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in merges]
    from open_clip.tokenizer import bytes_to_unicode

    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={v: i for i, v in enumerate(vocab)},
        merges=merges,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


def ref_tokens(prompts: list[str]) -> torch.Tensor:
    """Upstream tokens: SOT ... EOT, truncated to 77 (EOT kept), zero padded."""
    tok = hf_tokenizer()
    out = torch.zeros(len(prompts), 77, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids = tok(p, add_special_tokens=True)["input_ids"]
        if len(ids) > 77:
            ids = ids[:76] + [ids[-1]]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def ref_processor(pil: bool = True):
    """CLIP preprocessing as upstream ran it (PIL backend); `pil=False`: transformers 5's torchvision backend."""
    cls = _PilProcessor if pil else CLIPImageProcessor
    return cls(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        do_resize=True,
        do_center_crop=True,
        resample=3,
        image_mean=MEAN,
        image_std=STD,
        do_convert_rgb=True,
    )


def ref_pixels(images, pil: bool = True) -> torch.Tensor:
    return ref_processor(pil)(images=images, return_tensors="pt")["pixel_values"]


def _feat(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_hf_clip(directory: Path, file: str = "pytorch_model.bin") -> CLIPModel:
    """A CLIPModel from config.json + weights (position_ids buffers dropped, then strict)."""
    cfg = json.loads((directory / "config.json").read_text())
    model = CLIPModel(CLIPConfig(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}))
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(str(directory / file))
    else:
        sd = torch.load(directory / file, map_location="cpu", weights_only=True)
    sd = {k: v for k, v in sd.items() if not k.endswith("position_ids")}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith("position_ids") for k in missing), missing
    return model.eval()


class UpstreamMLP(nn.Module):
    """The upstream HP / aesthetic head (nn.Sequential with dropouts, no activations)."""

    def __init__(self, dims):
        super().__init__()
        d = dims
        self.layers = nn.Sequential(
            nn.Linear(d[0], d[1]),
            nn.Dropout(0.2),
            nn.Linear(d[1], d[2]),
            nn.Dropout(0.2),
            nn.Linear(d[2], d[3]),
            nn.Dropout(0.1),
            nn.Linear(d[3], d[4]),
            nn.Linear(d[4], d[5]),
        )

    def forward(self, x):
        return self.layers(x)


def load_mlp(file: Path) -> UpstreamMLP:
    sd = torch.load(file, map_location="cpu", weights_only=True)
    dims = [sd["layers.0.weight"].shape[1]] + [sd[f"layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6, 7)]
    mlp = UpstreamMLP(dims)
    mlp.load_state_dict(sd)
    return mlp.eval()


@torch.no_grad()
def ref_cosine(model: CLIPModel, pixels: torch.Tensor, tokens: torch.Tensor, logit_scaled: bool = False):
    img = _feat(model.get_image_features(pixel_values=pixels))
    txt = _feat(model.get_text_features(input_ids=tokens))
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    cos = (img * txt).sum(-1)
    return cos * model.logit_scale.exp() if logit_scaled else cos


@torch.no_grad()
def ref_hp(backbone: CLIPModel, mlp: UpstreamMLP, pixels: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(mlp(_feat(backbone.get_image_features(pixel_values=pixels))).squeeze(-1))


@torch.no_grad()
def ref_aesthetic(backbone: CLIPModel, mlp: UpstreamMLP, pixels: torch.Tensor) -> torch.Tensor:
    f = _feat(backbone.get_image_features(pixel_values=pixels))
    return mlp(f / f.norm(dim=-1, keepdim=True)).squeeze(-1)
