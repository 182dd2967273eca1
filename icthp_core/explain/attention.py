"""Gradient-weighted attention relevance for the ViT image towers (open_clip and transformers' BLIP `BlipVisionModel`;
Chefer et al. 2021, "Generic Attention-model Explainability"), through an explicit (non-fused) attention path used
only while explaining."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from icthp_core.explain.common import ExplainError, with_grad


def _is_open_clip(tower: nn.Module | None) -> bool:
    blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
    return blocks is not None and all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in blocks)


def _is_blip(tower: nn.Module | None) -> bool:
    try:
        from transformers.models.blip.modeling_blip import BlipAttention
    except ImportError:  # transformers is optional: without it there are no BLIP towers
        return False
    layers = getattr(getattr(tower, "encoder", None), "layers", None)
    return layers is not None and all(isinstance(getattr(x, "self_attn", None), BlipAttention) for x in layers)


def vision_tower(model: nn.Module) -> nn.Module:
    """The ViT image tower of a reward model: open_clip (TextImageModel `.clip.visual`, ImageHeadModel `.visual`) or
    BLIP's `BlipVisionModel` (ImageReward / BLIP pretrain `.vision`, BLIP retrieval `.model.vision_model`); a
    one-line error for other towers."""
    candidates = (
        getattr(getattr(model, "clip", None), "visual", None),
        getattr(model, "visual", None),
        getattr(model, "vision", None),
        getattr(getattr(model, "model", None), "vision_model", None),
    )
    for tower in candidates:
        if tower is not None and (_is_open_clip(tower) or _is_blip(tower)):
            return tower
    raise ExplainError(f"{type(model).__name__}: attention relevance needs an open_clip or BLIP ViT tower")


def _explicit_attention(block: nn.Module, store: list[torch.Tensor]):
    """A replacement for `ResidualAttentionBlock.attention` that computes softmax(QK^T/sqrt(d))V step by step and
    keeps the attention probabilities [B, heads, N, N] in `store` (with their graph, for gradients)."""
    attn: nn.MultiheadAttention = block.attn

    def attention(q_x, k_x=None, v_x=None, attn_mask=None):
        if k_x is not None or v_x is not None:
            raise ExplainError("attention relevance: cross-attention blocks are not supported")
        x = q_x if attn.batch_first else q_x.transpose(0, 1)
        b, n, d = x.shape
        h = attn.num_heads
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q * (d // h) ** -0.5) @ k.transpose(-2, -1)
        if attn_mask is not None:
            logits = logits + attn_mask.to(logits.dtype)
        probs = logits.softmax(dim=-1)
        store.append(probs)
        out = attn.out_proj((probs @ v).transpose(1, 2).reshape(b, n, d))
        return out if attn.batch_first else out.transpose(0, 1)

    return attention


def _explicit_blip_attention(attn: nn.Module, store: list[torch.Tensor]):
    """A replacement for transformers' `BlipAttention.forward` that computes softmax(QK^T * scale)V step by step (no
    dropout: eval only) and keeps the attention probabilities [B, heads, N, N] in `store` (with their graph)."""

    def forward(hidden_states: torch.Tensor, **kwargs):
        b, n, d = hidden_states.shape
        h = attn.num_heads
        qkv = attn.qkv(hidden_states).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        probs = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
        store.append(probs)
        return attn.projection((probs @ v).transpose(1, 2).reshape(b, n, d)), probs

    return forward


def _patch(tower: nn.Module, store: list[torch.Tensor]) -> list[tuple[nn.Module, str]]:
    """Install the explicit attention on every block of `tower`; returns (module, attribute) to delete afterwards."""
    if _is_open_clip(tower):
        blocks = list(tower.transformer.resblocks)
        for block in blocks:
            block.attention = _explicit_attention(block, store)
        return [(b, "attention") for b in blocks]
    attns = [layer.self_attn for layer in tower.encoder.layers]
    for attn in attns:
        attn.forward = _explicit_blip_attention(attn, store)
    return [(a, "forward") for a in attns]


@contextmanager
def recording_attention(towers: list[nn.Module]) -> Iterator[dict[int, list[torch.Tensor]]]:
    """Within the block, the attention of each tower (open_clip or BLIP ViT) runs non-fused and its probabilities are
    recorded: yields {id(tower): [probs of block 0, block 1, ...]} (filled by each forward pass)."""
    stores: dict[int, list[torch.Tensor]] = {}
    patched: list[tuple[nn.Module, str]] = []
    try:
        for tower in towers:
            patched += _patch(tower, stores.setdefault(id(tower), []))
        yield stores
    finally:
        for module, name in patched:
            delattr(module, name)


def rollout(probs: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Relevance of each patch token to the class token: R = I; R += mean_heads((grad * A)^+) @ R per block.

    `probs`/`grads`: per block [B, heads, N, N] (token 0 = class token). Returns [B, N - 1].
    """
    b, _, n, _ = probs[0].shape
    r = torch.eye(n, dtype=torch.float32, device=probs[0].device).expand(b, n, n).clone()
    for a, g in zip(probs, grads, strict=True):
        cam = (g.float() * a.float()).clamp(min=0).mean(dim=1)
        r = r + cam @ r
    return r[:, 0, 1:]


@with_grad
def relevance(scorer, metric: str, images: torch.Tensor, prompt: str | None) -> dict[str, torch.Tensor]:
    """Relevance maps [B, g, g] of `metric` per image tower, keyed by the base metric of the tower, for float images
    in 0..1 [B,3,H,W]: one forward and one backward pass (through the explicit attention)."""
    from icthp_core.explain.common import base_metrics, metric_fn

    towers = {m: vision_tower(scorer.models[m]) for m in base_metrics(metric)}
    f = metric_fn(scorer, metric, prompt)
    x = images.detach().clone().requires_grad_(True)
    with recording_attention(list(towers.values())) as stores:
        score = f(x)
        probs = [p for t in towers.values() for p in stores[id(t)]]
        grads = torch.autograd.grad(score.sum(), probs)
    out, k = {}, 0
    for m, t in towers.items():
        count = len(stores[id(t)])
        rel = rollout(probs[k : k + count], list(grads[k : k + count]))
        k += count
        side = int(round(rel.shape[1] ** 0.5))
        if side * side != rel.shape[1]:
            raise ExplainError(f"{m}: {rel.shape[1]} patch tokens do not form a square grid")
        out[m] = rel.reshape(-1, side, side).detach().cpu()
    return out
