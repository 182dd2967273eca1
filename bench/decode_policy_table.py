"""The docs/evaluation.md decode-policy table: |score(view) - score(upstream)| per input, tiny random models.

Run from the repository root: `python bench/decode_policy_table.py` (CPU, ~10 s). The inputs are those of
tests/core/data/test_decode_policy.py; the models are the tiny test models, not the published weights.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> int:
    from test_decode_policy import _inputs

    from icthp_core.scoring.scorer import MultiScorer
    from icthp_core.testing.blip import save_tiny_imagereward
    from icthp_core.testing.tiny import save_tiny_hp, save_tiny_ict

    d = Path(tempfile.mkdtemp())
    sources = {
        "ict": str(save_tiny_ict(d / "ICT")),
        "hp": str(save_tiny_hp(d / "HP")),
        "imagereward": str(save_tiny_imagereward(d / "IR", seed=3)),
    }
    paths = []
    for name, data in _inputs().items():
        (d / name).write_bytes(data)
        paths.append(str(d / name))
    metrics = list(sources)
    res = {
        policy: MultiScorer(metrics, sources, device="cpu", decode_policy=policy).score(paths, "a photo")
        for policy in ("view", "upstream")
    }
    print("| input | " + " | ".join(metrics) + " |")
    for i, p in enumerate(paths):
        cells = [f"{abs(float(res['view'][m][i] - res['upstream'][m][i])):.1e}" for m in metrics]
        print(f"| {Path(p).name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
