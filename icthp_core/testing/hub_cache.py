"""A Hugging Face cache of tiny random models under the real default repo ids, for tests and offline demos.

`write_hub_cache(H)` writes `H/hub/models--ORG--NAME/{refs/main, snapshots/<sha>/...}` (the layout
huggingface_hub reads with `HF_HOME=H` and `HF_HUB_OFFLINE=1`), so the toolkit's real hub loading path runs on
them. The weights are random: every score they give is meaningless.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from icthp_core.checkpoints.convert import hf_to_open_clip
from icthp_core.checkpoints.files import save_state_dict
from icthp_core.scoring.registry import get_metric

_AESTHETIC_SEED = 7


def _ict(d: Path) -> None:
    from icthp_core.testing.tiny import save_tiny_ict

    save_tiny_ict(d, seed=0)


def _hp(d: Path) -> None:
    from icthp_core.testing.tiny import save_tiny_hp

    save_tiny_hp(d, seed=1)


def _clip(seed: int, fmt: str = "bin") -> Callable[[Path], None]:
    def build(d: Path) -> None:
        from icthp_core.testing.tiny import save_tiny_clip

        save_tiny_clip(d, seed=seed, fmt=fmt)

    return build


def _hpsv2(d: Path) -> None:
    """`HPS_v2_compressed.pt` / `HPS_v2.1_compressed.pt`: {"state_dict": open_clip keys}; a config.json (which the
    real repo lacks) gives the tiny architecture."""
    from icthp_core.testing.tiny import tiny_clip_config, tiny_hf_clip

    cfg = tiny_clip_config()
    for seed, name in ((4, "HPS_v2_compressed.pt"), (5, "HPS_v2.1_compressed.pt")):
        sd, _ = hf_to_open_clip(dict(tiny_hf_clip(seed, cfg).state_dict()))
        _save_nested(sd, d / name)
    (d / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip", **cfg}))


def _save_nested(sd: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd}, path)


def _aesthetic_head(d: Path) -> None:
    from icthp_core.testing.tiny import TINY_CLIP, tiny_head

    head = tiny_head(TINY_CLIP["projection_dim"], seed=_AESTHETIC_SEED)
    save_state_dict(head.state_dict(), d / "sac+logos+ava1-l14-linearMSE.pth")


def _imagereward(d: Path) -> None:
    from icthp_core.testing.blip import save_tiny_imagereward

    save_tiny_imagereward(d)
    (d / "vocab.txt").unlink()  # as published: the vocabulary comes from bert-base-uncased


def _bert(d: Path) -> None:
    from icthp_core.testing.blip import write_tiny_vocab

    write_tiny_vocab(d)
    (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))


def _blip(d: Path) -> None:
    from icthp_core.testing.blip import save_tiny_blip_retrieval

    save_tiny_blip_retrieval(d)


def _pipeline(arch: str) -> Callable[[Path], None]:
    def build(d: Path) -> None:
        from icthp_core.testing.diffusion import save_tiny_pipeline

        save_tiny_pipeline(arch, d)

    return build


#: the published reward repos, from the registry (the one list of hub ids)
ICT_REPO = get_metric("ict").default_source
HP_REPO = get_metric("hp").default_source
#: repo id -> builder of its tiny stand-in (the ids the toolkit loads by default)
REPOS: dict[str, Callable[[Path], None]] = {
    ICT_REPO: _ict,
    HP_REPO: _hp,
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": _clip(2),
    "yuvalkirstain/PickScore_v1": _clip(3, "safetensors"),
    "xswu/HPSv2": _hpsv2,
    "camenduru/improved-aesthetic-predictor": _aesthetic_head,
    "openai/clip-vit-large-patch14": _clip(6),
    "THUDM/ImageReward": _imagereward,
    "google-bert/bert-base-uncased": _bert,
    "Salesforce/blip-itm-large-coco": _blip,
    "stabilityai/stable-diffusion-3.5-large-turbo": _pipeline("sd3"),
    "black-forest-labs/FLUX.1-schnell": _pipeline("flux"),
}
#: groups of repos for `write_hub_cache(repos=...)`
GROUPS: dict[str, tuple[str, ...]] = {
    "rewards": (ICT_REPO, HP_REPO),
    "baselines": (
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        "yuvalkirstain/PickScore_v1",
        "xswu/HPSv2",
        "camenduru/improved-aesthetic-predictor",
        "openai/clip-vit-large-patch14",
        "THUDM/ImageReward",
        "google-bert/bert-base-uncased",
        "Salesforce/blip-itm-large-coco",
    ),
    "sd3": ("stabilityai/stable-diffusion-3.5-large-turbo",),
    "flux": ("black-forest-labs/FLUX.1-schnell",),
}


def repo_folder(hf_home: str | Path, repo_id: str) -> Path:
    """`HF_HOME/hub/models--ORG--NAME` (a repo id without an owner maps to `models--NAME`)."""
    return Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))


def commit_of(repo_id: str) -> str:
    """A fixed 40-hex commit id per repo (the cache's `refs/main`)."""
    return hashlib.sha1(f"icthp-tiny:{repo_id}".encode()).hexdigest()


def expand(repos: Iterable[str] | None) -> list[str]:
    """Repo ids of `repos` (ids or GROUPS names; None = every repo), checked against REPOS."""
    out: list[str] = []
    for r in REPOS if repos is None else repos:
        for rid in GROUPS.get(r, (r,)):
            if rid not in REPOS:
                raise ValueError(f"no tiny model for {rid!r}; choose from {', '.join([*GROUPS, *REPOS])}")
            if rid not in out:
                out.append(rid)
    return out


def write_hub_cache(hf_home: str | Path, repos: Iterable[str] | None = None) -> dict[str, Path]:
    """Write tiny random models for `repos` (default all) into the cache at `hf_home`; returns repo -> snapshot.

    A repo already present (its `refs/main` written) is kept as it is.
    """
    out: dict[str, Path] = {}
    for repo_id in expand(repos):
        folder, sha = repo_folder(hf_home, repo_id), commit_of(repo_id)
        snap = folder / "snapshots" / sha
        if not (folder / "refs" / "main").is_file():
            with tempfile.TemporaryDirectory(dir=Path(hf_home).parent if Path(hf_home).exists() else None) as tmp:
                build_dir = Path(tmp) / "build"
                REPOS[repo_id](build_dir)
                snap.parent.mkdir(parents=True, exist_ok=True)
                if snap.exists():
                    shutil.rmtree(snap)
                shutil.move(str(build_dir), snap)
            (folder / "refs").mkdir(parents=True, exist_ok=True)
            (folder / "refs" / "main").write_text(sha)
        out[repo_id] = snap
    return out
