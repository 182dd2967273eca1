"""Resolve a weights source: a local file or directory, or a Hugging Face Hub repo id (cache first).

Network use is short and honest: a file not in the cache costs one metadata request (no retries) before its
download; an unreachable hub, a gated or missing repo each end in one line that names the repo and the ways on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from icthp_core.errors import WeightsNotFoundError

#: seconds to wait for the hub's answer to the one metadata request made per file
PROBE_TIMEOUT = float(os.environ.get("ICTHP_HUB_TIMEOUT", "10"))

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def is_repo_id(src: str | os.PathLike) -> bool:
    """True for an 'owner/name' string that is not an existing local path."""
    text = os.fspath(src)
    return bool(_REPO_ID.match(text)) and not Path(text).expanduser().exists()


def _manifest_names(repo_id: str) -> list[str]:
    """Names of `icthp download` (the manifest) that fetch `repo_id`."""
    import json

    try:
        data = json.loads((Path(__file__).with_name("manifest.json")).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [name for name, m in data.get("models", {}).items() if m.get("repo") == repo_id]


def ways_on(repo_id: str) -> str:
    """The two ways to get weights onto a machine that cannot download them."""
    names = _manifest_names(repo_id)
    get = f"`icthp download {' '.join(names)}` or " if names else ""
    return (
        f"on a connected machine run {get}`hf download {repo_id}` and copy the Hugging Face cache (HF_HOME) here, "
        "or pass a local folder holding the weights"
    )


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_error(repo_id: str, err: BaseException) -> WeightsNotFoundError:
    """A one-line error for a failed hub request: unreachable, gated, unauthorised or missing repo."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, GatedRepoError) or status == 403:
        why = (
            f"the repo is gated: accept its terms at {_endpoint()}/{repo_id} and log in with `hf auth login` "
            "(or set HF_TOKEN)"
        )
    elif status == 401:
        why = (
            "the hub refused access (401): the repo is private or gated and needs `hf auth login` (or HF_TOKEN), "
            "or it does not exist"
        )
    elif isinstance(err, RepositoryNotFoundError) or status == 404:
        why = "no such repo on the hub (check the name)"
    elif isinstance(err, HfHubHTTPError) and status is not None:
        why = f"the hub answered HTTP {status}"
    else:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        why = f"the Hugging Face Hub ({_endpoint()}) could not be reached ({reason}) and the files are not cached"
        return WeightsNotFoundError(f"{repo_id}: {why}; {ways_on(repo_id)}")
    return WeightsNotFoundError(f"{repo_id}: {why}; or {ways_on(repo_id)}")


def _offline_error(repo_id: str, what: str) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"{repo_id}: {what} not in the Hugging Face cache and HF_HUB_OFFLINE=1; {ways_on(repo_id)}"
    )


def probe(repo_id: str, filename: str) -> bool:
    """One metadata request (no retries, short timeout): True if the repo has `filename`, False if not.

    Raises WeightsNotFoundError (one line) when the hub cannot be reached or the repo is gated/missing.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=PROBE_TIMEOUT, retry_on_errors=False)
    except LocalEntryNotFoundError as e:  # a subclass of EntryNotFoundError: a network failure, not a missing file
        raise hub_error(repo_id, e) from e
    except EntryNotFoundError:
        return False
    except Exception as e:  # noqa: BLE001 - every other failure is reported as one line naming the repo
        raise hub_error(repo_id, e) from e
    return True


def ensure_available(src: str | os.PathLike, marker: str) -> None:
    """Before a library's `from_pretrained(src)`: fail fast, in one line, if `src` is a repo id that can be
    neither read from the cache nor reached on the hub (`marker`: a file every such repo has, e.g. config.json)."""
    if not is_repo_id(src):
        return
    from huggingface_hub import try_to_load_from_cache

    repo_id = os.fspath(src)
    if isinstance(try_to_load_from_cache(repo_id, marker), str):
        return
    if _offline():
        raise _offline_error(repo_id, marker)
    if not probe(repo_id, marker):
        raise WeightsNotFoundError(f"{repo_id}: the repo has no {marker}; is it the right repo?")


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

    for cand in candidates:
        cached = try_to_load_from_cache(repo_id, cand)
        if isinstance(cached, str):
            return Path(cached)
    if _offline():
        if not required:
            return None
        raise _offline_error(repo_id, f"none of {list(candidates)} is")
    for cand in candidates:
        try:
            if not probe(repo_id, cand):
                continue
            return Path(hf_hub_download(repo_id, cand))
        except WeightsNotFoundError:
            if not required:  # an optional file (e.g. a config.json): the caller falls back to its defaults
                return None
            raise
        except Exception as e:  # noqa: BLE001 - the transfer failed after the hub answered: one line
            if not required:
                return None
            raise hub_error(repo_id, e) from e
    if not required:
        return None
    raise WeightsNotFoundError(f"{repo_id}: the repo has none of {list(candidates)}; is it the right repo?")
