"""The ICT and HP reward models as torch modules on open_clip backbones."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from icthp_core.checkpoints.config import HP_BACKBONE_NAMES, HP_HEAD_NAMES, read_hf_config
from icthp_core.checkpoints.files import check_finite, load_state_dict
from icthp_core.checkpoints.hub import resolve_file
from icthp_core.checkpoints.loading import load_clip, parse_device, parse_dtype
from icthp_core.errors import CheckpointError
from icthp_core.scoring.text import tokenizer_for

_HEAD_LAYERS = (0, 2, 4, 6, 7)


def _default_source(metric: str) -> str:
    """The registry's hub repo of `metric` (imported on use: the registry imports this module)."""
    from icthp_core.scoring.registry import METRICS

    return METRICS[metric].default_source


class HPHead(nn.Module):
    """The upstream HP / LAION-aesthetic MLP: five Linear layers with dropout and no activations.

    Keys `layers.{0,2,4,6,7}.{weight,bias}` as published. In eval mode it is one affine map (see `folded`).
    """

    def __init__(self, dims: tuple[int, ...] = (1024, 1024, 128, 64, 16, 1), dropout=(0.2, 0.2, 0.1)):
        super().__init__()
        d = dims
        self.layers = nn.Sequential(
            nn.Linear(d[0], d[1]),
            nn.Dropout(dropout[0]),
            nn.Linear(d[1], d[2]),
            nn.Dropout(dropout[1]),
            nn.Linear(d[2], d[3]),
            nn.Dropout(dropout[2]),
            nn.Linear(d[3], d[4]),
            nn.Linear(d[4], d[5]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], file: str | os.PathLike = "<head>") -> HPHead:
        """Build with the dims read from the published keys; strict."""
        expected = {f"layers.{i}.{p}" for i in _HEAD_LAYERS for p in ("weight", "bias")}
        if set(sd) != expected:
            missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
            raise CheckpointError(
                f"{file}: not an HP head state dict; missing keys {missing}, unexpected keys {unexpected}"
            )
        dims = (sd["layers.0.weight"].shape[1],) + tuple(sd[f"layers.{i}.weight"].shape[0] for i in _HEAD_LAYERS)
        head = cls(dims)
        try:
            head.load_state_dict(sd)
        except RuntimeError as e:
            raise CheckpointError(f"{file}: {e}") from e
        if dims[-1] != 1:
            raise CheckpointError(f"{file}: HP head must output one value, got {dims[-1]}")
        return head

    def folded(self) -> nn.Linear:
        """The eval-mode head as a single Linear (composed in float64 for accuracy)."""
        w = torch.eye(self.layers[0].in_features, dtype=torch.float64)
        b = torch.zeros(self.layers[0].in_features, dtype=torch.float64)
        for i in _HEAD_LAYERS:
            lin = self.layers[i]
            w = lin.weight.double() @ w
            b = lin.weight.double() @ b + lin.bias.double()
        out = nn.Linear(w.shape[1], w.shape[0], device=self.layers[0].weight.device)
        out.weight.data.copy_(w)
        out.bias.data.copy_(b)
        return out.to(self.layers[0].weight.dtype)


class TextImageModel(nn.Module):
    """Cosine similarity of a CLIP's text and image features (ICT, CLIP score, HPSv2; PickScore scales it).

    `logit_scaled=True` multiplies by `logit_scale.exp()` (PickScore). `tokenizer`: "open_clip" or "hf" (the
    flavour the model was built with, see `icthp_core.scoring.text`).
    """

    needs_prompt = True

    def __init__(
        self, clip: nn.Module, preprocess_mode: str = "crop", logit_scaled: bool = False, tokenizer: str = "open_clip"
    ):
        super().__init__()
        self.clip = clip
        self.preprocess_mode = preprocess_mode
        self.logit_scaled = logit_scaled
        self.tokenizer = tokenizer
        tokenizer_for(tokenizer)  # validates the name

    def tokenize(self, prompts) -> torch.Tensor:
        """Token ids [B, 77] with this model's tokenizer flavour."""
        return tokenizer_for(self.tokenizer)(prompts)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_text(tokens)

    def score_features(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        cos = F.cosine_similarity(image_features.float(), text_features.float(), dim=-1)
        return cos * self.clip.logit_scale.float().exp() if self.logit_scaled else cos

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.score_features(self.encode_image(pixels), self.encode_text(tokens))


class ICTModel(TextImageModel):
    """ICT score: cosine of the ICT CLIP's text and image features, in [-1, 1] (trained towards [0, 1];
    ~0.9 for images that contain the prompt)."""

    @classmethod
    def from_pretrained(cls, src: str | os.PathLike | None = None, device=None, dtype="fp32") -> ICTModel:
        """Load ICT from a hub id or folder in the published layout (default: the registry's ICT repo)."""
        return cls(load_clip(src or _default_source("ict"), device=parse_device(device), dtype=dtype))


class ImageHeadModel(nn.Module):
    """A prompt-free score: head(projected image features), optionally L2-normalised first and squashed by a sigmoid.

    The head is folded into one affine map for inference (it has no activations).
    """

    needs_prompt = False

    def __init__(
        self,
        visual: nn.Module,
        head: HPHead,
        normalize: bool = False,
        sigmoid: bool = True,
        preprocess_mode: str = "crop",
        fold_head: bool = True,
    ):
        super().__init__()
        self.visual = visual
        self.head = head
        self.normalize = normalize
        self.sigmoid = sigmoid
        self.preprocess_mode = preprocess_mode
        self.fold_head = fold_head
        object.__setattr__(self, "_folded", None)  # a cache, not a submodule (kept out of state_dict)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(pixels)

    def _head(self) -> nn.Module:
        if not self.fold_head or self.training or torch.is_grad_enabled():
            return self.head
        w = self.head.layers[0].weight
        if self._folded is None or (self._folded.weight.device, self._folded.weight.dtype) != (w.device, w.dtype):
            object.__setattr__(self, "_folded", self.head.folded())
        return self._folded

    def score_features(
        self, features: torch.Tensor, text_features: torch.Tensor | None = None, output: str = "score"
    ) -> torch.Tensor:
        """The score ([B] float32); `output="logit"` gives the head's raw output, before any sigmoid."""
        if output not in ("score", "logit"):
            raise ValueError(f"output={output!r}: expected 'score' or 'logit'")
        if self.normalize:
            features = F.normalize(features.float(), dim=-1)
        head = self._head()
        out = head(features.to(next(head.parameters()).dtype)).squeeze(-1).float()
        return torch.sigmoid(out) if self.sigmoid and output == "score" else out

    def forward(self, pixels: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        return self.score_features(self.encode_image(pixels))

    def train(self, mode: bool = True) -> ImageHeadModel:
        object.__setattr__(self, "_folded", None)
        return super().train(mode)


class HPModel(ImageHeadModel):
    """HP score: sigmoid(head(unnormalised projected image features)) of the HP backbone, in (0, 1) (~0.77 typical).

    `score_features(..., output="logit")` is the head's raw output (metric `hp_logit`): finite where the float32
    sigmoid saturates at exactly 1.0, and what upstream's trainer compares."""

    @classmethod
    def from_pretrained(cls, src: str | os.PathLike | None = None, device=None, dtype="fp32") -> HPModel:
        """Load `<HP>/hp_backbone/` (vision tower + projection only) and `<HP>/hp_scorer/` (the head)."""
        device, dtype = parse_device(device), parse_dtype(dtype)
        src = src or _default_source("hp")
        backbone = resolve_file(src, HP_BACKBONE_NAMES)
        config = read_hf_config(resolve_file(src, ("hp_backbone/config.json",), required=False))
        visual = load_clip(backbone, vision_only=True, device=device, dtype=dtype, hf_config=config)
        head = load_head(src, HP_HEAD_NAMES, feature_dim=visual.output_dim, backbone=backbone)
        return cls(visual, head.to(device=device, dtype=dtype).eval().requires_grad_(False))


def load_head(
    src: str | os.PathLike,
    candidates: tuple[str, ...],
    feature_dim: int | None = None,
    backbone: str | os.PathLike | None = None,
) -> HPHead:
    """Resolve and strictly load an HP/aesthetic head file (finite values; input size = `feature_dim` if given)."""
    head_file = resolve_file(src, candidates)
    if head_file is None:
        raise CheckpointError(f"{src}: no head file ({', '.join(candidates)})")
    sd = load_state_dict(head_file)
    check_finite(sd, head_file)
    head = HPHead.from_state_dict(sd, head_file)
    in_dim = head.layers[0].in_features
    if feature_dim is not None and in_dim != feature_dim:
        raise CheckpointError(
            f"{head_file}: the head takes {in_dim} features but the backbone"
            f"{f' {backbone}' if backbone else ''} gives {feature_dim}; they are not a pair"
        )
    return head
