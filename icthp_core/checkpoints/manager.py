"""Model manager: fetch the reward models' files listed in ``manifest.json`` and verify them.

Files go to ``<root>/<folder>/<path>`` (e.g. ComfyUI's ``models/icthp/ict/pytorch_model.bin``) or, without a
root, into the Hugging Face cache that ``icthp_core.checkpoints.hub`` reads. ``huggingface_hub`` does the transfer
(tqdm progress bar; an interrupted download resumes from its ``.incomplete`` file). Every file is checked against
the manifest's size and SHA-256 when the manifest has them; a file without a recorded hash is reported
``unverified`` with its computed hash. Offline, nothing is fetched: the report lists what is present and missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from icthp_core.errors import ConfigError

MANIFEST = Path(__file__).with_name("manifest.json")
STATES = ("ok", "unverified", "present", "missing", "bad")


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


def verify(local: Path, entry: dict[str, Any], hash_it: bool = True) -> tuple[str, str, str | None]:
    """(state, message, sha256) of a local file against its manifest entry."""
    size, want = entry.get("size"), entry.get("sha256")
    actual = local.stat().st_size
    if size is not None and actual != size:
        return "bad", f"size {actual} != manifest {size} (truncated or wrong file)", None
    if not hash_it:
        return "present", "hash not checked (offline listing)", None
    digest = sha256_file(local)
    if want is None:
        return "unverified", f"no hash in the manifest; sha256 {digest}", digest
    if digest != want.lower():
        return "bad", f"sha256 {digest} != manifest {want}", digest
    return "ok", "size and sha256 match the manifest", digest


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


def _one(name, m, entry, root, offline, convert, force, endpoint, revision, progress, cache_dir) -> FileReport:
    repo, path = m["repo"], entry["path"]
    local = None if force else _cached(repo, path, root, m["folder"], revision, cache_dir)
    if local is None and offline:
        return FileReport(name, repo, path, None, "missing", "offline: not present; run `icthp download` online")
    if local is None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        kwargs: dict[str, Any] = {"revision": revision, "endpoint": endpoint, "force_download": force}
        if root is not None:
            kwargs["local_dir"] = root / m["folder"]
        elif cache_dir is not None:
            kwargs["cache_dir"] = cache_dir
        (enable_progress_bars if progress else disable_progress_bars)()
        try:
            local = Path(hf_hub_download(repo, path, **kwargs))
        except Exception as e:  # one bad file must not stop the others; the row says why
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return FileReport(name, repo, path, None, "missing", f"download failed: {type(e).__name__}: {msg}")
    state, message, digest = verify(local, entry, hash_it=not offline)
    report = FileReport(name, repo, path, local, state, message, digest)
    target = entry.get("safetensors")
    if convert and target and state in ("ok", "unverified"):
        dst = (root / m["folder"] / target) if root is not None else local.parent / Path(target).name
        if not dst.is_file():
            convert_to_safetensors(local, dst)
        report.converted = dst
        report.message += f"; safetensors copy {dst}"
    return report


def summary(reports: list[FileReport]) -> str:
    counts = {s: sum(r.state == s for r in reports) for s in STATES}
    return ", ".join(f"{n} {s}" for s, n in counts.items() if n)
