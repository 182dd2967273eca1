"""`icthp score --from-metadata`: the scores stored in PNG metadata by the ComfyUI save node (no model loaded)."""

from __future__ import annotations

import json
import sys

from icthp_core.data.images import expand_paths
from icthp_core.data.metadata import read_record


def cmd_from_metadata(args) -> int:
    """One row per image with a record (JSONL to --output when given); files without one are reported."""
    paths = expand_paths(args.images) if args.images else []
    if not paths:
        raise ValueError("no images given (pass PNG files or folders)")
    rows, missing = [], 0
    for path in paths:
        try:
            record = read_record(path)
        except (OSError, ValueError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            missing += 1
            continue
        if record is None:
            print(f"error: {path}: no icthp_scores metadata", file=sys.stderr)
            missing += 1
            continue
        rows.append({"image": str(path), **record})
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if not args.quiet:
        for r in rows:
            scores = "  ".join(f"{m}={v:.4f}" for m, v in r["scores"].items())
            print(f"{r['image']}  {scores}  model={r.get('model')}  prompt={r.get('prompt')!r}")
    if missing:
        print(f"{missing} of {len(paths)} images have no readable scores", file=sys.stderr)
    return 1 if not rows else 0
