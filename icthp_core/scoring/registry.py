"""One registry of reward models: ICT, HP, ICT-HP and the baselines, each loading its own published weights.

Light to import (no torch, open_clip or transformers): the metadata serves `--help`, option checks and early
errors; each loader imports the model code when it runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from icthp_core.checkpoints.config import CLIP_WEIGHT_NAMES, VIT_H_14, VIT_L_14_OPENAI
from icthp_core.checkpoints.hub import resolve_file
from icthp_core.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from icthp_core.scoring.models import ImageHeadModel

#: metric families, as the front ends group them
FAMILIES = ("alignment", "image-only", "aesthetic")


@dataclass(frozen=True)
class HubFile:
    """A file of a metric's published hub repo, as `icthp download` fetches it (checkpoints/manifest.json).

    `safetensors`: the name of its safetensors conversion; `size`/`sha256`: recorded from a verified copy (None
    until then: the download is hashed and reported unverified).
    """

    path: str
    safetensors: str | None = None
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: the single source of its metadata for the CLI, the app, the ComfyUI nodes and eval.

    `model`: key of the model that computes it (metrics sharing a model share one instance); `inputs`/`combine`:
    for a metric derived from others (e.g. ICT-HP = ICT x HP) instead of a model of its own. `output`: which output
    of the model's `score_features` (e.g. "logit": HP's raw head output, metric `hp_logit`).
    """

    name: str
    label: str
    family: str  # one of FAMILIES
    description: str
    value_range: str  # documented range, e.g. "(0, 1)"
    needs_prompt: bool = True
    preprocess: str = "crop"  # a mode of icthp_core.data.preprocess.MODES ("crop": CLIP processor)
    model: str = ""
    default_source: str | None = None  # hub repo id of the published weights
    folder: str = ""  # sub-folder of a local model root (ComfyUI's models/icthp/<folder>); default: `model`
    files: tuple[HubFile, ...] = ()  # the repo's files that `icthp download` fetches
    higher_is_better: bool = True
    inputs: tuple[str, ...] = ()
    combine: Callable[..., torch.Tensor] | None = field(default=None, compare=False)
    output: str = "score"
    in_all: bool = True  # False: left out of `--metrics all` (its weights must be given with --source)

    @property
    def derived(self) -> bool:
        return bool(self.inputs)


METRICS: dict[str, MetricSpec] = {}
_LOADERS: dict[str, Callable[..., nn.Module]] = {}
#: metrics computed from other metrics: name -> (inputs, function) (a view of the derived entries of METRICS)
DERIVED: dict[str, tuple[tuple[str, ...], Callable[..., torch.Tensor]]] = {}


def register(spec: MetricSpec, loader: Callable[..., nn.Module] | None = None) -> None:
    """Add a metric; `loader(source, device, dtype)` builds its model (omit it to reuse another metric's model).

    A derived metric (``spec.inputs`` and ``spec.combine`` set) needs no loader.
    """
    if spec.family not in FAMILIES:
        raise ValueError(f"metric {spec.name!r}: family {spec.family!r} is not one of {FAMILIES}")
    if spec.derived:
        if spec.combine is None:
            raise ValueError(f"metric {spec.name!r}: a derived metric needs `combine`")
        DERIVED[spec.name] = (spec.inputs, spec.combine)
    elif not spec.model:
        raise ValueError(f"metric {spec.name!r}: `model` is required for a metric that is not derived")
    METRICS[spec.name] = spec
    if loader is not None:
        _LOADERS[spec.model] = loader


def unregister(name: str) -> None:
    """Remove a metric (tests and plugins); its model loader stays if another metric uses it."""
    spec = METRICS.pop(name)
    DERIVED.pop(name, None)
    if spec.model and not any(s.model == spec.model for s in METRICS.values()):
        _LOADERS.pop(spec.model, None)


def list_metrics(family: str | None = None) -> list[str]:
    """Names of the registered metrics (base and derived), optionally of one family, in registration order."""
    return [n for n, s in METRICS.items() if family is None or s.family == family]


def get_metric(name: str) -> MetricSpec:
    """The spec of `name`; a one-line error naming the choices if it is not registered."""
    if name not in METRICS:
        raise ConfigError(f"metric {name!r} is not registered; choose from {', '.join(list_metrics())}")
    return METRICS[name]


def metric_label(name: str) -> str:
    """Display label of a metric (the name itself for unknown names)."""
    spec = METRICS.get(name)
    return spec.label if spec else name


def parse_metrics(text: str | None, what: str = "--metrics") -> list[str]:
    """A comma-separated metric list checked against the registry; 'all' = every metric but those registered with
    `in_all=False` (weights that must be given with `--source`, e.g. `blip_pretrain_itc`)."""
    if (text or "").strip() == "all":
        names = [n for n in list_metrics() if METRICS[n].in_all]
    else:
        names = [m.strip() for m in (text or "").split(",")]
    names = list(dict.fromkeys(m for m in names if m))
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ConfigError(f"{what}: unknown metric(s) {', '.join(unknown)}; choose from {', '.join(list_metrics())}")
    if not names:
        raise ConfigError(f"{what}: no metric given; choose from {', '.join(list_metrics())}")
    return names


def _models():
    """`icthp_core.scoring.models`, imported when a model is first loaded (it pulls in torch and open_clip)."""
    from icthp_core.scoring import models

    return models


def _clip_metric(
    mode: str = "crop", logit_scaled: bool = False, filenames=CLIP_WEIGHT_NAMES, nested_key=None, tokenizer="open_clip"
):
    def load(source, device, dtype):
        from icthp_core.checkpoints.loading import load_clip
        from icthp_core.scoring.models import TextImageModel

        clip = load_clip(
            source, device=device, dtype=dtype, filenames=filenames, nested_key=nested_key, default_config=VIT_H_14
        )
        return TextImageModel(clip, preprocess_mode=mode, logit_scaled=logit_scaled, tokenizer=tokenizer)

    return load


HPSV2_FILES = ("HPS_v2_compressed.pt",)
HPSV21_FILES = ("HPS_v2.1_compressed.pt",)
#: what transformers' `BlipForImageTextRetrieval` and BLIP's BERT tokenizer read from a `save_pretrained` folder
BLIP_RETRIEVAL_FILES = tuple(
    HubFile(f)
    for f in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
)
AESTHETIC_HEAD_NAMES = ("sac+logos+ava1-l14-linearMSE.pth", "aesthetic_head.safetensors")
AESTHETIC_BACKBONE = "openai/clip-vit-large-patch14"


def _load_aesthetic(source, device, dtype) -> ImageHeadModel:
    """LAION aesthetic predictor v2: head(L2-normalised OpenAI CLIP ViT-L/14 image features), about 1..10.

    `source`: a head file, or a directory with the head file (and optionally a ViT-L/14 CLIP checkpoint,
    else `openai/clip-vit-large-patch14` is used), or a hub repo holding the head file.
    """
    from icthp_core.checkpoints.loading import load_clip
    from icthp_core.scoring.models import ImageHeadModel, load_head

    backbone_src: str | os.PathLike = AESTHETIC_BACKBONE
    if os.path.isdir(source) and resolve_file(source, CLIP_WEIGHT_NAMES, required=False):
        backbone_src = source
    visual = load_clip(backbone_src, vision_only=True, device=device, dtype=dtype, default_config=VIT_L_14_OPENAI)
    head = load_head(source, AESTHETIC_HEAD_NAMES, feature_dim=visual.output_dim)
    head = head.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return ImageHeadModel(visual, head, normalize=True, sigmoid=False)


register(
    MetricSpec(
        "ict",
        "ICT",
        "alignment",
        "ICT: how much of the prompt the image contains (cosine)",
        "[-1, 1], trained towards [0, 1]",
        model="ict",
        default_source="8y/ICT",
        files=(HubFile("pytorch_model.bin", "model.safetensors"),),
    ),
    lambda src, device, dtype: _models().ICTModel.from_pretrained(src, device=device, dtype=dtype),
)
register(
    MetricSpec(
        "hp",
        "HP",
        "image-only",
        "HP: prompt-free high-preference score (sigmoid)",
        "(0, 1)",
        needs_prompt=False,
        model="hp",
        default_source="8y/HP",
        files=(
            HubFile("hp_backbone/pytorch_model.bin", "hp_backbone/model.safetensors"),
            HubFile("hp_scorer/mlp_pytorch_model.bin", "hp_scorer/mlp.safetensors"),
        ),
    ),
    lambda src, device, dtype: _models().HPModel.from_pretrained(src, device=device, dtype=dtype),
)
register(
    MetricSpec(
        "hp_logit",
        "HP logit",
        "image-only",
        "HP's raw head output before the sigmoid (same HP weights and order; what the upstream trainer compares)",
        "unbounded, typically -2..4",
        needs_prompt=False,
        model="hp",
        default_source="8y/HP",
        output="logit",
    )
)
register(
    MetricSpec(
        "ict_hp",
        "ICT-HP",
        "alignment",
        "ICT x HP (paper §5)",
        "[-1, 1], in practice (0, 1)",
        inputs=("ict", "hp"),
        combine=lambda ict, hp: ict * hp,
    )
)
register(
    MetricSpec(
        "clip",
        "CLIP",
        "alignment",
        "CLIP score: LAION CLIP-H cosine",
        "[-1, 1], typically 0.2..0.4",
        model="clip",
        default_source="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
        files=(HubFile("open_clip_pytorch_model.bin", "open_clip_model.safetensors"),),
    ),
    _clip_metric(),
)
register(
    MetricSpec(
        "pickscore",
        "PickScore",
        "alignment",
        "PickScore v1: logit_scale.exp() x cosine",
        "about [-100, 100], typically 18..24",
        model="pickscore",
        default_source="yuvalkirstain/PickScore_v1",
        files=(HubFile("config.json"), HubFile("model.safetensors")),
    ),
    _clip_metric(logit_scaled=True, tokenizer="hf"),  # PickScore's reference code: the HF CLIP fast tokenizer
)
register(
    MetricSpec(
        "hpsv2",
        "HPSv2",
        "alignment",
        "HPSv2: cosine of the HPS CLIP-H, letterboxed input",
        "[-1, 1], typically 0.2..0.3",
        preprocess="letterbox",
        model="hpsv2",
        default_source="xswu/HPSv2",
        folder="hpsv2",
        files=tuple(HubFile(f) for f in HPSV2_FILES),
    ),
    _clip_metric("letterbox", filenames=HPSV2_FILES, nested_key="state_dict"),
)
register(
    MetricSpec(
        "hpsv2.1",
        "HPSv2.1",
        "alignment",
        "HPSv2.1: as HPSv2 with the v2.1 weights",
        "[-1, 1], typically 0.2..0.35",
        preprocess="letterbox",
        model="hpsv2.1",
        default_source="xswu/HPSv2",
        folder="hpsv2",
        files=tuple(HubFile(f) for f in HPSV21_FILES),
    ),
    _clip_metric("letterbox", filenames=HPSV21_FILES, nested_key="state_dict"),
)
register(
    MetricSpec(
        "aesthetic",
        "Aesthetic",
        "aesthetic",
        "LAION aesthetic predictor v2 (CLIP ViT-L/14 + MLP)",
        "unbounded, typically 1..10",
        needs_prompt=False,
        model="aesthetic",
        default_source="camenduru/improved-aesthetic-predictor",
        files=(HubFile(AESTHETIC_HEAD_NAMES[0]),),
    ),
    _load_aesthetic,
)


def _blip_metric(kind: str):
    def load(source, device, dtype):
        from icthp_core.scoring import blip

        cls = {
            "imagereward": blip.ImageRewardModel,
            "itc": blip.BlipITCModel,
            "itm": blip.BlipITMModel,
            "itm_cls": blip.BlipITMClsModel,
            "pretrain_itc": blip.BlipPretrainITCModel,
        }[kind]
        return cls.from_pretrained(source, device=device, dtype=dtype)

    return load


register(
    MetricSpec(
        "imagereward",
        "ImageReward",
        "alignment",
        "ImageReward v1.0 (BLIP ViT-L + cross-attention BERT + MLP), z-normalised",
        "unbounded, typically -2..2",
        preprocess="imagereward",
        model="imagereward",
        default_source="THUDM/ImageReward",
        files=(HubFile("ImageReward.pt"), HubFile("med_config.json")),
    ),
    _blip_metric("imagereward"),
)
register(
    MetricSpec(
        "blip_itc",
        "ITC (BLIP)",
        "alignment",
        "BLIP ViT-L image-text contrastive: cosine of the projected [CLS] features",
        "[-1, 1], typically 0.3..0.6",
        preprocess="blip",
        model="blip_itc",
        default_source="Salesforce/blip-itm-large-coco",
        folder="blip",
        files=BLIP_RETRIEVAL_FILES,
    ),
    _blip_metric("itc"),
)
register(
    MetricSpec(
        "blip_itm",
        "ITM (BLIP)",
        "alignment",
        "BLIP ViT-L image-text matching: probability of 'match', [ENC] first (BLIP's retrieval training)",
        "[0, 1]",
        preprocess="blip",
        model="blip_itm",
        default_source="Salesforce/blip-itm-large-coco",
        folder="blip",
        files=BLIP_RETRIEVAL_FILES,
    ),
    _blip_metric("itm"),
)
register(
    MetricSpec(
        "blip_itm_cls",
        "ITM (BLIP, [CLS])",
        "alignment",
        "BLIP ViT-L image-text matching with [CLS] first (BLIP's blip_itm.py, transformers' BlipProcessor)",
        "[0, 1]",
        preprocess="blip",
        model="blip_itm_cls",
        default_source="Salesforce/blip-itm-large-coco",
        folder="blip",
        files=BLIP_RETRIEVAL_FILES,
    ),
    _blip_metric("itm_cls"),
)
register(
    MetricSpec(
        "blip_pretrain_itc",
        "ITC (BLIP pretrain)",
        "alignment",
        "ImageReward's BLIP baseline: BLIP pretrain ViT-L (model_large.pth) at 224 px, cosine of projected [CLS]",
        "[-1, 1]",
        preprocess="imagereward",
        model="blip_pretrain_itc",
        default_source=None,
        in_all=False,
    ),
    _blip_metric("pretrain_itc"),
)


def model_key(metric: str) -> str:
    spec = get_metric(metric)
    if spec.derived:
        raise ConfigError(f"metric {metric!r} is derived from {spec.inputs}; it has no model of its own")
    return spec.model


def create_reward_model(metric: str, source: str | os.PathLike | None = None, device=None, dtype="fp32") -> nn.Module:
    """Load the model that computes `metric` (a base metric), from `source` or the metric's default hub id."""
    from icthp_core.checkpoints.loading import parse_device
    from icthp_core.dtypes import parse_dtype

    key = model_key(metric)
    src = source if source is not None else METRICS[metric].default_source
    return _LOADERS[key](src, parse_device(device), parse_dtype(dtype))


def required_base_metrics(metrics: list[str]) -> list[str]:
    """Base metrics needed to compute `metrics` (derived ones expanded), in a stable order."""
    out: list[str] = []
    for m in metrics:
        parts = DERIVED[m][0] if m in DERIVED else (m,)
        for p in parts:
            model_key(p)
            if p not in out:
                out.append(p)
    return out


MANIFEST_NOTE = (
    "Generated from icthp_core/scoring/registry.py (MetricSpec.default_source/folder/files) by "
    "scripts/write_manifest.py; edit the registry, not this file. Files of the published reward models. size/sha256 "
    "are null where they could not be read from the hub when this manifest was written (no network access): such "
    "files are downloaded and hashed, and reported as unverified. Fill them in with `icthp download --print-hashes` "
    "on a verified copy."
)


def _manifest_file(f: HubFile) -> dict[str, object]:
    entry: dict[str, object] = {"path": f.path, "size": f.size, "sha256": f.sha256}
    if f.safetensors:
        entry["safetensors"] = f.safetensors
    return entry


def hub_manifest() -> dict[str, object]:
    """The content of `icthp_core/checkpoints/manifest.json`: every registered model with published files, keyed
    by its model key (repo, local folder, files), in registration order."""
    models = {
        s.model: {
            "repo": s.default_source,
            "folder": s.folder or s.model,
            "files": [_manifest_file(f) for f in s.files],
        }
        for s in METRICS.values()
        if not s.derived and s.files
    }
    hashed = all(f.get("sha256") for m in models.values() for f in m["files"])
    return {"format": 1, "status": "verified" if hashed else "unverified", "note": MANIFEST_NOTE, "models": models}
