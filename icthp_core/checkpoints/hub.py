"""Resolve a weights source: a local file or directory, or a Hugging Face Hub repo id (cache first)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from icthp_core.errors import WeightsNotFoundError


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _how_to(src: str, candidates: Sequence[str]) -> str:
    return (
        f"download them with `hf download {src}` (or `huggingface-cli download {src}`) while online, "
        f"or pass a local directory holding one of {list(candidates)} (no local path {src!r} exists)"
    )


def resolve_file(src: str | os.PathLike, candidates: Sequence[str], *, required: bool = True) -> Path | None:
    """Return the first of `candidates` (paths relative to the source root) found for `src`.

    `src` is a file, a directory, or a hub repo id. For a hub id the local cache is tried first (no network
    call), then a download unless `HF_HUB_OFFLINE=1`. Returns None when `required` is False and nothing exists.
    """
    src_str = os.fspath(src)
    path = Path(src_str).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for cand in candidates:
            if (path / cand).is_file():
                return path / cand
        if not required:
            return None
        raise WeightsNotFoundError(f"{path}: none of {list(candidates)} found in this directory")
    if not _REPO_ID.match(src_str):
        if not required:
            return None
        raise WeightsNotFoundError(f"{src_str}: no such file or directory (and not a hub repo id 'owner/name')")
    return _resolve_hub(src_str, candidates, required)


def _resolve_hub(repo_id: str, candidates: Sequence[str], required: bool) -> Path | None:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    for cand in candidates:
        cached = try_to_load_from_cache(repo_id, cand)
        if isinstance(cached, str):
            return Path(cached)
    if _offline():
        if not required:
            return None
        raise WeightsNotFoundError(
            f"{repo_id}: none of {list(candidates)} is in the Hugging Face cache and HF_HUB_OFFLINE=1; "
            + _how_to(repo_id, candidates)
        )
    for cand in candidates:
        try:
            return Path(hf_hub_download(repo_id, cand))
        except EntryNotFoundError:
            continue
        except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
            if not required:
                return None
            msg = f"{repo_id}: cannot download {cand} ({e}); " + _how_to(repo_id, candidates)
            raise WeightsNotFoundError(msg) from e
    if not required:
        return None
    raise WeightsNotFoundError(f"{repo_id}: the repo has none of {list(candidates)}")
