"""icthp_core: the ICT and HP reward models (ICCV 2025) and baseline rewards on open_clip backbones.

ICT(image, prompt): how much of the prompt the image contains (cosine, ~0.9 for good images).
HP(image): prompt-free high-preference score in (0, 1) (~0.77 typical). ICT-HP = ICT x HP.
"""

from icthp_core.lazy import lazy_exports

__version__ = "0.1.0"

#: public name -> the module defining it, imported on first use: `import icthp_core.errors` (the command line's
#: options and errors) loads no torch, and `icthp_core.MultiScorer` still works as before
_LAZY = {
    "load_clip": "icthp_core.checkpoints.loading",
    **dict.fromkeys(("CheckpointError", "ICTHPError", "ImageLoadError", "WeightsNotFoundError"), "icthp_core.errors"),
    **dict.fromkeys(("HPHead", "HPModel", "ICTModel", "ImageHeadModel", "TextImageModel"), "icthp_core.scoring.models"),
    **dict.fromkeys(("preprocess_pil", "preprocess_tensor", "to_nchw"), "icthp_core.data.preprocess"),
    **dict.fromkeys(("METRICS", "create_reward_model", "list_metrics"), "icthp_core.scoring.registry"),
    **dict.fromkeys(("ICTHPScorer", "MultiScorer", "load_scorer"), "icthp_core.scoring.scorer"),
    "tokenize": "icthp_core.scoring.text",
    "RewardClient": "icthp_core.scale.client",
    "LocalReward": "icthp_core.scale.client",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "METRICS",
    "CheckpointError",
    "HPHead",
    "HPModel",
    "ICTHPError",
    "ICTHPScorer",
    "ICTModel",
    "ImageHeadModel",
    "ImageLoadError",
    "LocalReward",
    "MultiScorer",
    "RewardClient",
    "TextImageModel",
    "WeightsNotFoundError",
    "create_reward_model",
    "list_metrics",
    "load_clip",
    "load_scorer",
    "preprocess_pil",
    "preprocess_tensor",
    "to_nchw",
    "tokenize",
]
