"""The `image-reward` PyPI package's own model code (1.5) as an independent test reference, imported offline.

Only its model modules are imported: the package's `__init__` pulls OpenAI's `clip` (a git-URL dependency), so the
package and its `models` folders are registered as bare namespace modules first. transformers 5 moved three helpers
that its `med.py` imports from `transformers.modeling_utils`; they are put back from `transformers.pytorch_utils`
(or given their plain definitions) for the import only, and its `init_weights` call is routed to its own
`_init_weights` (transformers 5 changed what `PreTrainedModel.init_weights` expects). No scoring math is touched.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch


def _chunking(forward_fn, chunk_size, chunk_dim, *inputs):  # transformers' helper; ImageReward passes chunk_size 0
    if chunk_size > 0:
        chunks = zip(*(t.chunk(t.shape[chunk_dim] // chunk_size, dim=chunk_dim) for t in inputs), strict=True)
        return torch.cat([forward_fn(*c) for c in chunks], dim=chunk_dim)
    return forward_fn(*inputs)


def _invert_attention_mask(self, mask: torch.Tensor) -> torch.Tensor:  # transformers 4.27 ModuleUtilsMixin
    ext = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
    ext = ext.to(dtype=self.dtype)
    return (1.0 - ext) * torch.finfo(self.dtype).min


def _get_head_mask(self, head_mask, num_hidden_layers: int, is_attention_chunked: bool = False):
    if head_mask is not None:
        raise NotImplementedError("head masks are not used by ImageReward")
    return [None] * num_hidden_layers


def load_reference(monkeypatch):
    """The module `ImageReward.ImageReward` (class `ImageReward`, BLIP modules under `ImageReward.models.BLIP`)."""
    spec = importlib.util.find_spec("ImageReward")
    if spec is None or spec.origin is None:
        raise RuntimeError("the `image-reward` package is not installed (pip install --no-deps image-reward==1.5)")
    root = Path(spec.origin).parent
    for name in [k for k in sys.modules if k == "ImageReward" or k.startswith("ImageReward.")]:
        monkeypatch.delitem(sys.modules, name)
    for name, path in (("ImageReward", root), ("ImageReward.models", root / "models")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        monkeypatch.setitem(sys.modules, name, mod)
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    fallbacks = {"apply_chunking_to_forward": _chunking}
    for n in ("apply_chunking_to_forward", "find_pruneable_heads_and_indices", "prune_linear_layer"):
        if not hasattr(mu, n):
            monkeypatch.setattr(mu, n, getattr(pu, n, None) or fallbacks.get(n, lambda *a, **k: None), raising=False)
    med = importlib.import_module("ImageReward.models.BLIP.med")
    # transformers 5's init_weights ties weights through attributes that only post_init() sets; the initial
    # values do not matter here (the tests overwrite every weight), so apply the module's own _init_weights
    monkeypatch.setattr(med.BertPreTrainedModel, "init_weights", lambda self: self.apply(self._init_weights))
    for name, fn in (("invert_attention_mask", _invert_attention_mask), ("get_head_mask", _get_head_mask)):
        if not hasattr(med.BertPreTrainedModel, name):  # transformers 4 helpers its BertModel.forward calls
            monkeypatch.setattr(med.BertPreTrainedModel, name, fn, raising=False)
    return importlib.import_module("ImageReward.ImageReward")
