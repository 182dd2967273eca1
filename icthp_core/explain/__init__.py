"""Explanations of reward scores: which words of the prompt and which regions of the image a score rests on.

- `explain(scorer, image, prompt)` -> `Explanation` (tensors + `to_json()`);
- `icthp_core.explain.words`: removal drops and integrated gradients per word;
- `icthp_core.explain.regions`: occlusion grids; `icthp_core.explain.attention`: Chefer et al. relevance;
- `icthp_core.explain.curves`: deletion / insertion AUCs; `icthp_core.explain.render`: overlays and word bars.
"""

from icthp_core.lazy import lazy_exports

#: public name -> the module defining it, imported on first use (`icthp_core.explain.methods` loads no torch)
_LAZY = {
    **dict.fromkeys(("METHODS", "ExplainError", "parse_methods"), "icthp_core.explain.methods"),
    **dict.fromkeys(("Explanation", "explain"), "icthp_core.explain.api"),
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)

__all__ = ["METHODS", "ExplainError", "Explanation", "explain", "parse_methods"]
