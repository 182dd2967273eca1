"""Prompt tokenisation with the open_clip CLIP tokenizer (77 tokens, SOT 49406, EOT 49407, zero padding)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache

import torch

CONTEXT_LENGTH = 77


@lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


class PromptTruncatedWarning(UserWarning):
    """A prompt is longer than the CLIP context and was cut."""


def check_prompt(prompt: object, where: str = "prompt") -> str:
    """Return the prompt, or raise ValueError for a non-string or blank prompt."""
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: expected a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError(f"{where}: the prompt is empty")
    return prompt


def tokenize(prompts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """Token ids [B, context_length]; prompts longer than the context are truncated with a warning."""
    if isinstance(prompts, str):
        prompts = [prompts]
    tok = _tokenizer()
    for i, p in enumerate(prompts):
        check_prompt(p, f"prompts[{i}]")
        n = len(tok.encode(p)) + 2
        if n > context_length:
            warnings.warn(
                f"prompt {p[:40]!r}... has {n} tokens; truncated to {context_length}",
                PromptTruncatedWarning,
                stacklevel=2,
            )
    return tok(list(prompts), context_length=context_length)
