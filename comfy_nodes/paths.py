"""Model folders and sources for the ICT-HP nodes (ComfyUI's ``models/icthp/`` and ``models/loras/``)."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from icthp_core.checkpoints.config import CLIP_WEIGHT_NAMES, HP_BACKBONE_NAMES, HP_HEAD_NAMES
from icthp_core.scoring.registry import METRICS

FOLDER = "icthp"
ICT_HUB = METRICS["ict"].default_source
HP_HUB = METRICS["hp"].default_source


def register_model_folder() -> None:
    """Register ``<ComfyUI models>/icthp`` (idempotent; extra paths from extra_model_paths.yaml are kept)."""
    folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER))


def _roots() -> list[Path]:
    register_model_folder()
    return [Path(p) for p in folder_paths.get_folder_paths(FOLDER)]


def is_ict_dir(path: Path) -> bool:
    """A folder the core loads as ICT (the core's weight-file names, so the dropdown lists what loads)."""
    return path.is_dir() and any((path / f).is_file() for f in CLIP_WEIGHT_NAMES)


def is_hp_dir(path: Path) -> bool:
    return any((path / f).is_file() for f in HP_BACKBONE_NAMES) and any((path / f).is_file() for f in HP_HEAD_NAMES)


def local_models(kind: str) -> list[str]:
    """Sub-folder names of ``models/icthp`` holding an ICT (``kind="ict"``) or HP (``"hp"``) model."""
    test = is_ict_dir if kind == "ict" else is_hp_dir
    names: set[str] = set()
    for root in _roots():
        if root.is_dir():
            names.update(p.name for p in root.iterdir() if test(p))
    return sorted(names)


def source_options(kind: str) -> list[str]:
    """Dropdown entries: local folders first, then the hub id."""
    hub = ICT_HUB if kind == "ict" else HP_HUB
    return [*local_models(kind), hub]


def vision_source_options() -> list[str]:
    return [
        *(f"ICT: {n}" for n in local_models("ict")),
        *(f"HP: {n}" for n in local_models("hp")),
        f"ICT: {ICT_HUB}",
        f"HP: {HP_HUB}",
    ]


def resolve_source(name: str) -> str:
    """A dropdown entry → a local directory path (when it is a folder of ``models/icthp``) or the hub id."""
    if not name or not name.strip():
        raise ValueError(f"empty model source: pick a folder of models/icthp or a hub id such as {ICT_HUB}")
    name = name.strip()
    for root in _roots():
        cand = root / name  # an absolute `name` would replace `root`: only names that stay inside it count
        if not os.path.isabs(name) and cand.is_dir() and cand.resolve().is_relative_to(root.resolve()):
            return str(cand)
    if os.path.isabs(name) or os.path.exists(name) or ".." in Path(name).parts:
        return check_local_source(name)
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # hub id, resolved (and downloaded) by icthp_core.checkpoints.hub
    roots = ", ".join(str(r) for r in _roots())
    raise FileNotFoundError(f"model folder {name!r} not found in models/{FOLDER} ({roots}) and not a hub id")


#: set to 1 to allow model sources outside ComfyUI's model folders (free-text fields, absolute paths)
ALLOW_ANY_PATH_ENV = "ICTHP_ALLOW_ANY_PATH"


def allowed_roots() -> list[Path]:
    """Folders a local model source may be in: ComfyUI's models folder and the registered icthp folders."""
    return [Path(folder_paths.models_dir).resolve(), *(r.resolve() for r in _roots())]


def check_local_source(name: str) -> str:
    """`name` (a local file or folder) if it lies inside ComfyUI's model folders or $ICTHP_ALLOW_ANY_PATH=1.

    A workflow is data that anyone can share: it must not make the server read arbitrary files.
    """
    shown = os.path.basename(name.rstrip("/")) or name
    if os.environ.get(ALLOW_ANY_PATH_ENV) != "1":  # checked first: a refusal says nothing about what exists
        real = Path(name).resolve()
        if not any(real.is_relative_to(r) for r in allowed_roots()):
            raise PermissionError(
                f"model source {shown!r} is outside ComfyUI's model folders; "
                f"put it in models/{FOLDER}, or start ComfyUI with {ALLOW_ANY_PATH_ENV}=1 to allow any path"
            )
    if not os.path.exists(name):
        raise FileNotFoundError(f"model source not found: {shown}")
    return name


def free_text_source(name: str) -> str:
    """A free-text model source (hub id, or a local path under the model folders); see `check_local_source`."""
    name = name.strip()
    if os.path.isabs(name) or os.path.exists(name) or name.startswith((".", "~")) or name.count("/") > 1:
        return check_local_source(os.path.expanduser(name))
    return name


def lora_options() -> list[str]:
    return [n for n in folder_paths.get_filename_list("loras") if n.endswith(".safetensors")]


def lora_path(name: str) -> str:
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        raise FileNotFoundError(f"LoRA {name!r} not found in models/loras ({folder_paths.get_folder_paths('loras')})")
    return path


def source_fingerprint(name: str) -> tuple:
    """Changes when a local model folder's files change (for ``fingerprint_inputs``); hub ids are constant."""
    try:
        path = Path(resolve_source(name))
    except (FileNotFoundError, ValueError):
        return (name, "missing")
    except PermissionError:
        return (name, "refused")  # execute() reports it
    if not path.exists():
        return (name,)
    return (name, _shallow_stat(path))


def _shallow_stat(path: Path, depth: int = 2, limit: int = 256) -> tuple:
    """(relative name, mtime, size) of the files at most `depth` levels down (at most `limit`): a model folder's
    weights and configs, without walking a large tree on every run."""
    if path.is_file():
        st = path.stat()
        return ((path.name, st.st_mtime_ns, st.st_size),)
    out, level = [], [path]
    for _ in range(depth):
        nxt = []
        for d in level:
            try:
                entries = sorted(d.iterdir())
            except OSError:
                continue
            for p in entries:
                if len(out) >= limit:
                    return tuple(out)
                if p.is_file():
                    st = p.stat()
                    out.append((str(p.relative_to(path)), st.st_mtime_ns, st.st_size))
                elif p.is_dir():
                    nxt.append(p)
        level = nxt
    return tuple(out)


def lora_fingerprint(name: str) -> tuple:
    path = folder_paths.get_full_path("loras", name)
    if path is None:
        return (name, "missing")
    st = os.stat(path)
    return (name, st.st_mtime_ns, st.st_size)
