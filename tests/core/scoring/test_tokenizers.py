"""Each model's tokenizer flavour: PickScore (and the upstream trainer) = HF CLIP fast tokenizer, ICT/HP inference =
open_clip. The reference is a transformers `CLIPTokenizerFast` built here from the BPE file itself (CLIP's recipe)."""

from __future__ import annotations

import gzip
from functools import lru_cache

import torch

from icthp_core.scoring.registry import create_reward_model
from icthp_core.scoring.scorer import MultiScorer
from icthp_core.scoring.text import tokenize, tokenize_hf

TRICKY = [
    "“curly quotes” and ‘single’",
    "salt &amp; pepper, &lt;b&gt;",
    "ＦＵＬＬ ｗｉｄｔｈ ＡＢＣ",
    "café  crème   brûlée",
]
PLAIN = ["a photo of a cat", "A RED car, on the road!!", "cat " * 100]


@lru_cache(maxsize=1)
def reference():
    """CLIPTokenizerFast from `bpe_simple_vocab_16e6.txt.gz` as CLIP builds its vocabulary (bytes, </w>, merges)."""
    from open_clip.tokenizer import default_bpe
    from transformers import CLIPTokenizerFast

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in lines]
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    units = [chr(c) for c in cs]
    words = units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizerFast(vocab={w: i for i, w in enumerate(words)}, merges=merges)


def _ref_ids(texts):
    ids = reference()(texts, truncation=True, max_length=77)["input_ids"]
    out = torch.zeros(len(ids), 77, dtype=torch.long)
    for i, row in enumerate(ids):
        out[i, : len(row)] = torch.tensor(row)
    return out


def test_hf_flavour_matches_clip_tokenizer_fast():
    texts = TRICKY + PLAIN
    assert torch.equal(tokenize_hf(texts), _ref_ids(texts))
    assert tokenize_hf(PLAIN[-1:])[0, -1] == 49407  # truncated, EOT kept


def test_open_clip_flavour_differs_on_tricky_text_only():
    assert torch.equal(tokenize(PLAIN[:2]), _ref_ids(PLAIN[:2]))
    for t in TRICKY[:3]:  # ftfy / html-unescape / NFKC change these
        assert not torch.equal(tokenize([t]), _ref_ids([t])), t


def test_models_carry_their_tokenizer(tiny_ict):
    pick = create_reward_model("pickscore", str(tiny_ict), device="cpu")
    ict = create_reward_model("ict", str(tiny_ict), device="cpu")
    assert torch.equal(pick.tokenize(TRICKY), _ref_ids(TRICKY))
    assert torch.equal(ict.tokenize(TRICKY), tokenize(TRICKY))
    scorer = MultiScorer(["pickscore", "ict"], models={"pickscore": pick, "ict": ict}, device="cpu")
    with torch.no_grad():
        feats = scorer._text_features("pickscore", TRICKY[:1])
        want = pick.encode_text(_ref_ids(TRICKY[:1]))
        other = pick.encode_text(tokenize(TRICKY[:1]))
    torch.testing.assert_close(feats, want)
    assert not torch.allclose(feats, other)
