"""Model manager: fetch the reward models' files listed in ``manifest.json`` and verify them.

Files go to ``<root>/<folder>/<path>`` (e.g. ComfyUI's ``models/icthp/ict/pytorch_model.bin``) or, without a
root, into the Hugging Face cache that ``icthp_core.checkpoints.hub`` reads. ``huggingface_hub`` does the transfer
(tqdm progress bar; an interrupted download resumes from its ``.incomplete`` file). Every file is checked against
the manifest's size and SHA-256 when the manifest has them, else (online) against the hub's size and, for LFS
files, its SHA-256; a file without any known hash is reported ``unverified`` with its computed hash.

A file that fails its check is moved out of the loaders' path (renamed ``<name>.bad`` next to it, the report says
where) and fetched once more; offline it is only moved. Manifest ``folder``/``path``/``safetensors`` values must be
relative paths inside the model folder. One bad entry, failed download or failed conversion is that file's row
(``missing``, ``bad`` or ``error``); the other files proceed. Offline, nothing is fetched: the report lists what is
present and missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from icthp_core.errors import ConfigError

MANIFEST = Path(__file__).with_name("manifest.json")
STATES = ("ok", "unverified", "present", "missing", "bad", "error")
#: states that make `icthp download` exit non-zero
FAILED = ("missing", "bad", "error")
QUARANTINE_SUFFIX = ".bad"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class FileReport:
    model: str
    repo: str
    path: str  # path inside the repo
    local: Path | None
    state: str  # one of STATES ("present": found offline, size checked, hash not computed)
    message: str = ""
    sha256: str | None = None
    converted: Path | None = None

    def line(self) -> str:
        where = str(self.local) if self.local else "-"
        extra = f"  {self.message}" if self.message else ""
        return f"{self.state:<10} {self.model:<12} {self.repo}/{self.path} -> {where}{extra}"


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The manifest (``icthp_core/checkpoints/manifest.json`` by default); raises ValueError naming bad entries."""
    p = Path(path) if path else MANIFEST
    data = json.loads(p.read_text(encoding="utf-8"))
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ConfigError(f"{p}: no 'models' object")
    for name, m in models.items():
        for key in ("repo", "folder", "files"):
            if key not in m:
                raise ConfigError(f"{p}: model {name!r} has no {key!r}")
    return models


def select_models(names: list[str] | None, manifest: dict[str, Any]) -> list[str]:
    if not names:
        return ["ict", "hp"]
    if names == ["all"]:
        return list(manifest)
    unknown = [n for n in names if n not in manifest]
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; the manifest lists {sorted(manifest)} (or 'all')")
    return list(dict.fromkeys(names))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(
    local: Path, entry: dict[str, Any], hash_it: bool = True, hub: tuple[int | None, str | None] | None = None
) -> tuple[str, str, str | None]:
    """(state, message, sha256) of a local file against its manifest entry, else the hub's (size, sha256)."""
    size, want, source = entry.get("size"), entry.get("sha256"), "manifest"
    hub_size, hub_sha = hub or (None, None)
    actual = local.stat().st_size
    for expected, where in ((size, "manifest"), (hub_size, "hub")):
        if expected is not None and actual != expected:
            return "bad", f"size {actual} != {where} {expected} (truncated or wrong file)", None
    if not hash_it:
        return "present", "hash not checked (offline listing)", None
    digest = sha256_file(local)
    if want is None and hub_sha is not None:
        want, source = hub_sha, "hub"
    if want is None:
        return "unverified", f"no hash in the manifest or from the hub; sha256 {digest}", digest
    if digest != want.lower():
        return "bad", f"sha256 {digest} != {source} {want}", digest
    if source == "hub":
        return "unverified", f"no hash in the manifest; size and sha256 match the hub ({digest})", digest
    return "ok", "size and sha256 match the manifest", digest


def quarantine(path: Path) -> Path:
    """Move a bad file out of the loaders' path: renamed ``<name>.bad`` next to it (replacing an older one)."""
    dst = path.with_name(path.name + QUARANTINE_SUFFIX)
    os.replace(path, dst)
    return dst


def check_relative(value: object, what: str) -> str:
    """`value` if it is a relative path without ``..`` (so it stays inside the model folder); ConfigError naming
    `what` otherwise."""
    ok = isinstance(value, str) and value.strip() != ""
    if ok:
        posix, win = PurePosixPath(value), PureWindowsPath(value)
        ok = not (posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts or ".." in win.parts)
    if not ok:
        raise ConfigError(
            f"{what} = {value!r}: must be a relative path inside the model folder (no '..', not absolute)"
        )
    return value


def convert_to_safetensors(src: Path, dst: Path) -> Path:
    """Write a ``.safetensors`` copy of a torch weights file (read with weights_only=True; never executes code)."""
    from icthp_core.checkpoints.files import load_state_dict, save_state_dict

    sd = load_state_dict(src)
    # safetensors refuses tensors sharing memory (tied weights): save independent copies
    save_state_dict({k: v.clone() for k, v in sd.items()}, dst, metadata={"icthp.converted_from": src.name})
    return dst


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _cached(repo: str, path: str, root: Path | None, folder: str, revision: str | None, cache_dir) -> Path | None:
    if root is not None:
        p = root / folder / path
        return p if p.is_file() else None
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, path, revision=revision, cache_dir=cache_dir)
    return Path(hit) if isinstance(hit, str) else None


def fetch(
    names: list[str] | None = None,
    root: str | os.PathLike | None = None,
    *,
    offline: bool | None = None,
    convert: bool = False,
    force: bool = False,
    endpoint: str | None = None,
    revision: str | None = None,
    manifest: str | os.PathLike | None = None,
    progress: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> list[FileReport]:
    """Download (or, offline, look up) the files of ``names`` and verify them; one report per file.

    ``root=None``: the Hugging Face cache (``cache_dir``, default huggingface_hub's), where the toolkit's hub ids
    resolve without a download.

    Errors of one file (network, missing on the hub, bad hash) are reported in its row; the others proceed.
    """
    models = load_manifest(manifest)
    offline = _offline() if offline is None else offline
    root_path = Path(root).expanduser() if root is not None else None
    reports: list[FileReport] = []
    for name in select_models(names, models):
        m = models[name]
        for entry in m["files"]:
            reports.append(
                _one(
                    name,
                    m,
                    entry,
                    root_path,
                    offline,
                    convert,
                    force,
                    endpoint,
                    revision or m.get("revision"),
                    progress,
                    cache_dir,
                )
            )
    return reports


def _hub_meta(repo: str, path: str, revision: str | None, endpoint: str | None) -> tuple[int | None, str | None]:
    """The hub's (size, sha256) of a file: the SHA-256 is the LFS ETag (other files' ETags are git hashes)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, path, revision=revision, endpoint=endpoint))
    except Exception:  # noqa: BLE001 - no metadata: the file is checked against the manifest only
        return None, None
    etag = (meta.etag or "").strip('"').lower()
    return meta.size, etag if _SHA256.match(etag) else None


def _download(repo, path, root, folder, revision, endpoint, force, progress, cache_dir) -> Path | str:
    """The downloaded file, or the one-line reason it failed."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    kwargs: dict[str, Any] = {"revision": revision, "endpoint": endpoint, "force_download": force}
    if root is not None:
        kwargs["local_dir"] = root / folder
    elif cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        return Path(hf_hub_download(repo, path, **kwargs))
    except Exception as e:  # one bad file must not stop the others; the row says why
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"download failed: {type(e).__name__}: {msg}"


def _one(name, m, entry, root, offline, convert, force, endpoint, revision, progress, cache_dir) -> FileReport:
    repo, path = m["repo"], entry.get("path")
    try:
        check_relative(path, f"model {name!r} files path")
        check_relative(m["folder"], f"model {name!r} folder")
        if entry.get("safetensors") is not None:
            check_relative(entry["safetensors"], f"model {name!r} {path} safetensors")
    except ConfigError as e:
        return FileReport(name, repo, str(path), None, "error", f"manifest: {e}; skipped")
    local = None if force else _cached(repo, path, root, m["folder"], revision, cache_dir)
    if local is None and offline:
        return FileReport(name, repo, path, None, "missing", "offline: not present; run `icthp download` online")
    known = entry.get("size") is not None and entry.get("sha256") is not None
    hub = None if offline or known else _hub_meta(repo, path, revision, endpoint)
    note = ""
    if local is not None:
        state, message, digest = verify(local, entry, hash_it=not offline, hub=hub)
        if state == "bad":
            moved = quarantine(local)
            if offline:
                hint = "run `icthp download` online to fetch it again"
                return FileReport(name, repo, path, moved, "bad", f"{message}; moved to {moved}; {hint}")
            note, local = f"; the copy present was bad ({message}), moved to {moved}, fetched again", None
    if local is None:
        got = _download(repo, path, root, m["folder"], revision, endpoint, force or bool(note), progress, cache_dir)
        if isinstance(got, str):
            return FileReport(name, repo, path, None, "missing", got + note)
        local = got
        state, message, digest = verify(local, entry, hash_it=True, hub=hub)
        if state == "bad":
            moved = quarantine(local)
            return FileReport(name, repo, path, moved, "bad", f"{message}; moved to {moved}{note}")
    report = FileReport(name, repo, path, local, state, message + note, digest)
    target = entry.get("safetensors")
    if convert and target and state in ("ok", "unverified"):
        _convert(report, local, (root / m["folder"] / target) if root is not None else local.parent / Path(target).name)
    return report


def _convert(report: FileReport, local: Path, dst: Path) -> None:
    """Write the safetensors copy; a file that cannot be read makes the row an error (the others proceed)."""
    try:
        if not dst.is_file():
            convert_to_safetensors(local, dst)
    except Exception as e:  # noqa: BLE001 - this file's row, never the run's abort
        detail = str(e).splitlines()[0] if str(e) else ""
        report.state = "error"
        report.message += f"; cannot convert to safetensors ({type(e).__name__}: {detail})"
        return
    report.converted = dst
    report.message += f"; safetensors copy {dst}"


def summary(reports: list[FileReport]) -> str:
    counts = {s: sum(r.state == s for r in reports) for s in STATES}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)
