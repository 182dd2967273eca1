"""Write icthp_core/checkpoints/manifest.json from the metric registry (`python scripts/write_manifest.py`).

tests/test_manifest_registry.py fails while the file and the registry disagree.
"""

from __future__ import annotations

import json
from pathlib import Path

from icthp_core.checkpoints.manager import MANIFEST
from icthp_core.scoring.registry import hub_manifest


def manifest_text() -> str:
    """The manifest as written: two-space JSON, one trailing newline."""
    return json.dumps(hub_manifest(), indent=2) + "\n"


if __name__ == "__main__":
    Path(MANIFEST).write_text(manifest_text(), encoding="utf-8")
    print(f"wrote {MANIFEST}")
