"""What the app's pure modules share: the user-input error, metric labels and the constants. The concerns live in
`ranking` (ranks, winners, the scoring paradox), `uploads` (upload checks, allowed folders), `matching` (A/B pairs,
win rates) and `csv_export`. No Gradio and no models in here."""

from __future__ import annotations

import re

from icthp_core.data.images import IMAGE_SUFFIXES
from icthp_core.errors import ICTHPError
from icthp_core.scoring.registry import list_metrics, metric_label

#: ICT, HP and ICT-HP: the metrics of the two published models (they share one scorer in the app)
CORE_METRICS: tuple[str, ...] = ("ict", "hp", "ict_hp")
PRIMARY = "ict_hp"
IMAGE_EXTS = frozenset(IMAGE_SUFFIXES)
MAX_PROMPT_FILE_BYTES = 64 * 1024


class InputError(ICTHPError, ValueError):
    """A problem with what the user supplied; the message is shown in the UI as is."""


_DIR_PART = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\\/\s:'\"]+)+[\\/]")


def public_message(message: str) -> str:
    """`message` with the folders of any absolute path removed: a user never sees the server's file layout."""
    return _DIR_PART.sub("", message)


def label(metric: str) -> str:
    return metric_label(metric)


def alignment_baselines() -> list[str]:
    """Registered text-image alignment metrics other than ICT / ICT-HP (the scoring paradox compares against them)."""
    return [m for m in list_metrics("alignment") if m not in CORE_METRICS]
