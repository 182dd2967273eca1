"""`icthp download`: fetch and verify the ICT, HP and baseline weights (icthp_core/checkpoints/manifest.json)."""

from __future__ import annotations

import argparse
import json
import sys

from icthp_cli.options import user_path
from icthp_core.errors import CheckpointError, WeightsNotFoundError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="*", help="models of the manifest (default: ict hp; 'all' for every one)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--dir", help="download into DIR/<model folder>/ (default: the Hugging Face cache)")
    where.add_argument("--comfyui", help="a ComfyUI folder: download into its models/icthp/")
    p.add_argument("--offline", action="store_true", help="fetch nothing: list what is present and what is missing")
    p.add_argument("--convert", action="store_true", help="also write safetensors copies of .bin files")
    p.add_argument("--force", action="store_true", help="download again even when present")
    p.add_argument("--endpoint", help="hub endpoint (default: huggingface_hub's, HF_ENDPOINT)")
    p.add_argument("--manifest", help="another manifest JSON")
    p.add_argument("--list", action="store_true", help="list the manifest's models and exit")
    p.add_argument(
        "--print-hashes",
        action="store_true",
        help="print the manifest with the sizes and SHA-256 of the files present (to fill in a verified manifest)",
    )
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Every file on stdout; exit 0 when all are present and verified, else the summary as one error line (2)."""
    from pathlib import Path

    from icthp_core.checkpoints.manager import fetch, load_manifest, summary

    if args.list:
        with user_path("--manifest", args.manifest):
            manifest = load_manifest(args.manifest)
        for name, m in manifest.items():
            files = ", ".join(f["path"] for f in m["files"])
            print(f"{name:<12} {m['repo']}  [{files}]")
        return 0
    root = Path(args.comfyui) / "models" / "icthp" if args.comfyui else args.dir
    with user_path("--manifest", args.manifest):
        load_manifest(args.manifest)  # a missing or unreadable manifest is one line before any download
    reports = fetch(
        args.models,
        root,
        offline=True if args.offline else None,
        convert=args.convert,
        force=args.force,
        endpoint=args.endpoint,
        manifest=args.manifest,
        progress=not args.no_progress,
    )
    if args.print_hashes:
        print(json.dumps(filled_manifest(args.manifest, reports), indent=2))
        return 0
    for r in reports:
        print(r.line())
    if any(r.state in ("bad", "error") for r in reports):  # checkpoints.manager.FAILED less "missing"
        raise CheckpointError(f"{summary(reports)} (each file listed on stdout)")
    if any(r.state == "missing" for r in reports):
        raise WeightsNotFoundError(f"{summary(reports)} (each file listed on stdout)")
    print(summary(reports), file=sys.stderr)
    return 0


def filled_manifest(path: str | None, reports) -> dict:
    """The manifest with ``size``/``sha256`` of every file a report hashed (others left as they are)."""
    from icthp_core.checkpoints.manager import load_manifest, sha256_file

    models = load_manifest(path)
    for r in reports:
        if r.local is None or r.state == "bad":
            continue
        entry = next(f for f in models[r.model]["files"] if f["path"] == r.path)
        entry["size"] = r.local.stat().st_size
        entry["sha256"] = r.sha256 or sha256_file(r.local)
    hashed = all(f.get("sha256") for m in models.values() for f in m["files"])
    return {"format": 1, "status": "verified" if hashed else "unverified", "models": models}
