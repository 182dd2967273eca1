"""CLIP prompt tokenisation, in the two flavours the reward models were built with (77 tokens, SOT 49406, EOT 49407,
zero padding in both):

- "open_clip" (:func:`tokenize`): open_clip's tokenizer, which cleans text with ftfy and HTML-unescapes it
  (ICT/HP inference in upstream's `eval.py`, HPSv2, the CLIP score);
- "hf" (:func:`tokenize_hf`): the Hugging Face CLIP *fast* tokenizer (no ftfy, no HTML unescape), as PickScore's
  reference code and the upstream ICT/HP trainer use. Built offline from the same BPE file that open_clip ships.

They differ on curly quotes, `&amp;`-style entities and full-width characters, so each model carries its own.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache

import torch

from icthp_core.data.prompts import check_prompt
from icthp_core.errors import ConfigError

CONTEXT_LENGTH = 77


@lru_cache(maxsize=1)
def _tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=CONTEXT_LENGTH)


class PromptTruncatedWarning(UserWarning):
    """A prompt is longer than the CLIP context and was cut."""


@lru_cache(maxsize=1)
def hf_clip_tokenizer():
    """transformers' CLIP fast tokenizer with CLIP's BPE vocabulary and merges (read from open_clip's copy)."""
    from transformers import CLIPTokenizerFast

    oc = _tokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(k, k): v for k, v in oc.encoder.items()}
    merges = [tuple(m) for m in sorted(oc.bpe_ranks, key=oc.bpe_ranks.get)]
    return CLIPTokenizerFast(vocab=vocab, merges=merges)


def tokenize_hf(prompts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """Token ids [B, context_length] of the HF CLIP fast tokenizer (truncated keeping EOT), zero padded."""
    if isinstance(prompts, str):
        prompts = [prompts]
    for i, p in enumerate(prompts):
        check_prompt(p, f"prompts[{i}]")
    ids = hf_clip_tokenizer()(list(prompts), truncation=True, max_length=context_length)["input_ids"]
    out = torch.zeros(len(ids), context_length, dtype=torch.long)
    for i, row in enumerate(ids):
        out[i, : len(row)] = torch.tensor(row)
    return out


#: tokenizer flavours by name (see the module doc)
TOKENIZERS = {"open_clip": None, "hf": tokenize_hf}


def tokenizer_for(name: str):
    """The tokenize function of flavour `name` ("open_clip" or "hf")."""
    if name not in TOKENIZERS:
        raise ConfigError(f"tokenizer {name!r}: choose from {', '.join(TOKENIZERS)}")
    return TOKENIZERS[name] or tokenize


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
