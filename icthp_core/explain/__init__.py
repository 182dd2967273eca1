"""Explanations of reward scores: which words of the prompt and which regions of the image a score rests on.

- `explain(scorer, image, prompt)` -> `Explanation` (tensors + `to_json()`);
- `icthp_core.explain.words`: removal drops and integrated gradients per word;
- `icthp_core.explain.regions`: occlusion grids; `icthp_core.explain.attention`: Chefer et al. relevance;
- `icthp_core.explain.curves`: deletion / insertion AUCs; `icthp_core.explain.render`: overlays and word bars.
"""

from icthp_core.explain.api import METHODS, Explanation, explain, parse_methods
from icthp_core.explain.common import ExplainError

__all__ = ["METHODS", "ExplainError", "Explanation", "explain", "parse_methods"]
