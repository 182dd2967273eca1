"""Explanations of reward scores: which words of the prompt and which regions of the image a score rests on.

- `explain(scorer, image, prompt)` -> `Explanation` (tensors + `to_json()`);
- `icthp_core.explain.words`: removal drops and integrated gradients per word;
- `icthp_core.explain.regions`: occlusion grids; `icthp_core.explain.attention`: Chefer et al. relevance;
- `icthp_core.explain.curves`: deletion / insertion AUCs; `icthp_core.explain.render`: overlays and word bars.
"""

#: public name -> the module defining it, imported on first use (`icthp_core.explain.methods` loads no torch)
_LAZY = {
    **dict.fromkeys(("METHODS", "ExplainError", "parse_methods"), "icthp_core.explain.methods"),
    **dict.fromkeys(("Explanation", "explain"), "icthp_core.explain.api"),
}


def __getattr__(name: str):
    """The public names, imported on first use (importing a light submodule loads no torch)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'icthp_core.explain' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["METHODS", "ExplainError", "Explanation", "explain", "parse_methods"]
