"""icthp_core: the ICT and HP reward models (ICCV 2025) and baseline rewards on open_clip backbones.

ICT(image, prompt): how much of the prompt the image contains (cosine, ~0.9 for good images).
HP(image): prompt-free high-preference score in (0, 1) (~0.77 typical). ICT-HP = ICT x HP.
"""

from icthp_core.checkpoints.loading import load_clip
from icthp_core.data.preprocess import preprocess_pil, preprocess_tensor, to_nchw
from icthp_core.errors import CheckpointError, ICTHPError, ImageLoadError, WeightsNotFoundError
from icthp_core.scoring.models import HPHead, HPModel, ICTModel, ImageHeadModel, TextImageModel
from icthp_core.scoring.registry import METRICS, create_reward_model, list_metrics
from icthp_core.scoring.scorer import ICTHPScorer, MultiScorer, load_scorer
from icthp_core.scoring.text import tokenize

__version__ = "0.1.0"

_LAZY = {"RewardClient": "icthp_core.scale.client", "LocalReward": "icthp_core.scale.client"}


def __getattr__(name: str):
    """Reward-server clients, imported on first use (no requests/ray import at `import icthp_core`)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'icthp_core' has no attribute {name!r}")


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
