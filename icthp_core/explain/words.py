"""Word contributions to a prompt-conditioned score: removal drops (one batched text pass) and integrated
gradients on the token embeddings (with the completeness check)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from icthp_core.explain.common import ExplainError, base_metrics, check_metric, text_metrics, with_grad
from icthp_core.scoring.registry import METRICS
from icthp_core.scoring.text import tokenize

#: a word: letters/digits, with inner apostrophes or hyphens ("don't", "black-and-white"); punctuation is not a word
WORD_RE = re.compile(r"\w+(?:['’\-]\w+)*", re.UNICODE)
#: |drop| below this share of |score(prompt)| reads as "neutral" rather than contained / not contained
NEUTRAL_SHARE = 0.01


@dataclass
class Word:
    """One word of the prompt: its characters `[start, end)` and its token positions `[tok_start, tok_end)`."""

    text: str
    start: int
    end: int
    tok_start: int
    tok_end: int


def word_spans(prompt: str) -> list[tuple[int, int]]:
    """Character spans of the words of `prompt` (whitespace and punctuation separate words)."""
    return [m.span() for m in WORD_RE.finditer(prompt)]


def _n_tokens(tok, text: str) -> int:
    """Number of content tokens of `text` (without the leading and trailing special tokens); 0 for blank text."""
    if not text.strip():
        return 0
    ids = tok([text])[0]
    ids = ids[0] if ids.dim() == 2 else ids  # BLIP tokenizers stack ids and mask as [B, 2, L]
    return int((ids != 0).sum()) - 2


def map_words(prompt: str, tok=tokenize) -> list[Word]:
    """Words of `prompt` with their token positions (1 = first token after the start token), from the token counts
    of prefixes ending at word boundaries (CLIP BPE and BERT WordPiece never merge across them)."""
    words = []
    for s, e in word_spans(prompt):
        a, b = _n_tokens(tok, prompt[:s]), _n_tokens(tok, prompt[:e])
        words.append(Word(prompt[s:e], s, e, 1 + a, 1 + b))
    return words


def without(prompt: str, word: Word) -> str:
    """`prompt` with `word` removed (spaces collapsed)."""
    return re.sub(r"\s+", " ", prompt[: word.start] + " " + prompt[word.end :]).strip()


def _fixed_scores(scorer, metric: str, pixels: dict, skip: str, prompt: str) -> dict[str, torch.Tensor]:
    """Scores [1] of the base metrics of `metric` other than `skip` (image-only: they do not change with words)."""
    others = [m for m in base_metrics(metric) if m != skip]
    return {k: v.float() for k, v in scorer._base_scores(others, pixels, [prompt]).items()} if others else {}


def _tokenizer_of(model):
    return getattr(model, "tokenize", tokenize)


@torch.no_grad()
def removal_scores(scorer, metric: str, pixels: dict[str, torch.Tensor], prompts: list[str]) -> torch.Tensor:
    """Scores [N] of `metric` for one image (preprocessed `pixels`, batch 1) and N prompts: image features once,
    all prompts in one text-tower call per text model."""
    base: dict[str, torch.Tensor] = {}
    n = len(prompts)
    for m in base_metrics(metric):
        model = scorer.models[m]
        feats = model.encode_image(pixels[getattr(model, "preprocess_mode", "crop")])
        if m in text_metrics(metric):
            text = model.encode_text(_tokenizer_of(model)(prompts).to(scorer.device))
            base[m] = model.score_features(feats.expand(n, *feats.shape[1:]), text).float()
        else:  # an image-only part (HP in ICT-HP): the same for every prompt
            output = METRICS[m].output
            base[m] = model.score_features(feats, **({} if output == "score" else {"output": output}))
            base[m] = base[m].float().expand(n)
    return scorer._derive(metric, base).float().cpu()


def reading(drop: float, score: float, share: float = NEUTRAL_SHARE) -> str:
    """ICT's containment reading of a removal drop: removing a word the image lacks *raises* the score."""
    tol = share * max(abs(score), 1e-12)
    if drop < -tol:
        return "not contained"
    return "contained" if drop > tol else "neutral"


@with_grad
def integrated_gradients(scorer, metric: str, pixels, prompt: str, steps: int = 32) -> tuple[torch.Tensor, dict]:
    """Integrated gradients of `metric` on the token embeddings of `prompt` (open_clip text towers).

    Baseline: zero embeddings at the prompt's tokens (start, end and padding tokens kept). Returns per-token
    attributions [77] and a check dict {score, baseline_score, sum, delta, relative_error}: completeness holds when
    the attributions sum to score - baseline_score (captum's Gauss-Legendre rule, `steps` points).
    """
    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise ExplainError("integrated gradients need captum: pip install 'icthp[explain]'") from None

    tms = text_metrics(metric)
    if len(tms) != 1:
        raise ExplainError(f"metric {metric!r}: integrated gradients need exactly one prompt-conditioned model")
    m = tms[0]
    model = scorer.models[m]
    clip = getattr(model, "clip", None)
    if clip is None or not hasattr(clip, "token_embedding"):
        raise ExplainError(f"metric {metric!r}: integrated gradients need an open_clip text tower ({m} has none)")
    ids = _tokenizer_of(model)([prompt]).to(scorer.device)
    pixels = {k: v.clone() for k, v in pixels.items()}  # inference tensors (ComfyUI) cannot enter a graph
    with torch.no_grad():
        img = model.encode_image(pixels[getattr(model, "preprocess_mode", "crop")])
        emb = clip.token_embedding(ids).detach()
        fixed = _fixed_scores(scorer, metric, pixels, m, prompt)
    eot = int(ids[0].argmax())
    baseline = emb.clone()
    baseline[:, 1:eot] = 0

    def forward(e: torch.Tensor) -> torch.Tensor:
        handle = clip.token_embedding.register_forward_hook(lambda mod, inp, out: e.to(out.dtype))
        try:
            text = model.encode_text(ids.expand(e.shape[0], -1))
        finally:
            handle.remove()
        s = model.score_features(img.expand(e.shape[0], *img.shape[1:]), text).float()
        return scorer._derive(metric, {**fixed, m: s}).float()

    ig = IntegratedGradients(forward)
    attr, delta = ig.attribute(emb.float(), baselines=baseline.float(), n_steps=steps, return_convergence_delta=True)
    per_token = attr[0].sum(-1).detach().cpu()
    with torch.no_grad():
        full, base = float(forward(emb)[0]), float(forward(baseline)[0])
    total = float(per_token.sum())
    check = {
        "score": full,
        "baseline_score": base,
        "sum": total,
        "delta": float(delta[0]),
        "relative_error": abs(total - (full - base)) / max(abs(full - base), 1e-12),
        "steps": steps,
    }
    return per_token, check


def word_contributions(
    scorer, image_pixels: dict[str, torch.Tensor], prompt: str, metric: str, ig_steps: int | None = 32
) -> dict:
    """Per word: removal drop, integrated-gradients share (None where not available), reading; sorted by drop.

    Returns {"metric", "score", "words": [...], "ig_check": {...} | None, "other_tokens_ig": float | None}.
    """
    check_metric(scorer, metric)
    if not text_metrics(metric):
        raise ExplainError(f"metric {metric!r} does not read the prompt; it has no word contributions")
    model = scorer.models[text_metrics(metric)[0]]
    words = map_words(prompt, _tokenizer_of(model))
    if not words:
        raise ExplainError(f"prompt {prompt!r}: no words to explain")
    variants = [without(prompt, w) for w in words]
    ok = [i for i, v in enumerate(variants) if v.strip()]
    scores = removal_scores(scorer, metric, image_pixels, [prompt] + [variants[i] for i in ok])
    full = float(scores[0])
    drops: dict[int, float] = {i: full - float(s) for i, s in zip(ok, scores[1:], strict=True)}
    per_token, check, ig_error = None, None, None
    if ig_steps and getattr(model, "clip", None) is not None:
        try:
            per_token, check = integrated_gradients(scorer, metric, image_pixels, prompt, ig_steps)
        except ExplainError as e:  # e.g. captum not installed: the removal drops still stand
            ig_error = str(e)
    rows = []
    for i, w in enumerate(words):
        ig = float(per_token[w.tok_start : w.tok_end].sum()) if per_token is not None else None
        drop = drops.get(i)
        rows.append(
            {
                "word": w.text,
                "start": w.start,
                "end": w.end,
                "tokens": [w.tok_start, w.tok_end],
                "removal_drop": drop,
                "ig": ig,
                "reading": reading(drop, full) if drop is not None else "only word",
                "truncated": w.tok_end > 76,
            }
        )
    rows.sort(key=lambda r: -(r["removal_drop"] if r["removal_drop"] is not None else r["ig"] or 0.0))
    other = None
    if per_token is not None:
        in_words = sum(float(per_token[w.tok_start : w.tok_end].sum()) for w in words)
        other = float(per_token.sum()) - in_words
    return {
        "metric": metric,
        "score": full,
        "words": rows,
        "ig_check": check,
        "ig_error": ig_error,
        "other_tokens_ig": other,
    }
