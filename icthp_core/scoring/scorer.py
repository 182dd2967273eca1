"""Batched, cached scoring with any set of registered metrics; ICTHPScorer is the ICT + HP + ICT-HP case."""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from icthp_core.checkpoints.loading import parse_device, parse_dtype
from icthp_core.data.images import DecodePolicy, parse_decode_policy, to_pil
from icthp_core.data.preprocess import preprocess_pil, preprocess_tensor
from icthp_core.data.prompts import check_prompt
from icthp_core.errors import ConfigError
from icthp_core.scoring.registry import DERIVED, METRICS, create_reward_model, required_base_metrics
from icthp_core.scoring.text import tokenize

ImageInput = str | os.PathLike | Image.Image | np.ndarray


def prompts_for(prompts: str | Sequence[str] | None, n: int) -> list[str] | None:
    """One prompt for all images, or one per image (length checked)."""
    if prompts is None:
        return None
    if isinstance(prompts, str):
        return [check_prompt(prompts)] * n
    prompts = list(prompts)
    if len(prompts) != n:
        raise ValueError(f"prompts: got {len(prompts)} prompts for {n} images (give one prompt, or one per image)")
    return [check_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]


class MultiScorer:
    """Scores images with several metrics, sharing models, preprocessing and text features.

    `metrics`: names from `icthp_core.list_metrics()`; `sources`: metric -> hub id or local path;
    `models`: already-built models by metric name (skips loading); `decode_policy`: how images given as paths,
    bytes or PIL images become RGB ("view", the default: EXIF orientation, alpha on white; "upstream": as the
    reference code, `convert("RGB")` without rotation; see `icthp_core.data.images.DecodePolicy`).
    """

    def __init__(
        self,
        metrics: Sequence[str] = ("ict", "hp", "ict_hp"),
        sources: dict[str, str] | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "fp32",
        models: dict[str, nn.Module] | None = None,
        text_cache_size: int = 4096,
        decode_policy: str | DecodePolicy = DecodePolicy.VIEW,
    ):
        self.decode_policy = parse_decode_policy(decode_policy)
        self.metrics = list(metrics)
        if not self.metrics:
            raise ValueError("metrics: at least one metric is needed")
        self.device, self.dtype = parse_device(device), parse_dtype(dtype)
        self.base_metrics = required_base_metrics(self.metrics)
        sources = sources or {}
        self.models: dict[str, nn.Module] = {}
        for m in self.base_metrics:
            self.models[m] = self._model_for(m, sources, models or {})
        self._text_cache: dict[str, OrderedDict[str, torch.Tensor]] = {m: OrderedDict() for m in self.models}
        self._text_cache_size = text_cache_size

    def _model_for(self, metric: str, sources: dict[str, str], models: dict[str, nn.Module]) -> nn.Module:
        """The model of `metric`: given, shared with a metric of the same model and source (`hp_logit` uses the
        `hp` instance and `--hp` weights), or loaded."""
        spec = METRICS[metric]
        src = sources.get(metric, sources.get(spec.model))
        for other, model in self.models.items():
            if METRICS[other].model == spec.model and sources.get(other, sources.get(spec.model)) == src:
                return model
        given = models.get(metric, models.get(spec.model))
        if given is not None:
            return given
        return create_reward_model(metric, src, device=self.device, dtype=self.dtype)

    def to(self, device: str | torch.device) -> MultiScorer:
        """Move every model to `device` (a no-op for weights already there) and drop cached text features."""
        device = parse_device(device)
        for model in self.models.values():
            model.to(device)
        if device != self.device:
            for cache in self._text_cache.values():
                cache.clear()
        self.device = device
        return self

    def compile(self, **kwargs) -> MultiScorer:
        """`torch.compile` every image tower in place (state-dict keys unchanged); the first batch of each new
        shape pays the compile time, so warm up before timing. `kwargs` go to `torch.compile`."""
        for model in {id(m): m for m in self.models.values()}.values():
            tower = getattr(model, "visual", None)
            if tower is None and getattr(model, "clip", None) is not None:
                tower = getattr(model.clip, "visual", None)
            if tower is None:
                raise ValueError(f"compile: no image tower found on {type(model).__name__}")
            tower.compile(**kwargs)
        return self

    @property
    def needs_prompt(self) -> bool:
        return any(getattr(m, "needs_prompt", False) for m in self.models.values())

    @property
    def preprocess_modes(self) -> list[str]:
        return sorted({getattr(m, "preprocess_mode", "crop") for m in self.models.values()})

    def _text_features(self, metric: str, prompts: list[str]) -> torch.Tensor:
        """Features for each prompt; each distinct prompt is encoded once and cached (no grad)."""
        cache, model = self._text_cache[metric], self.models[metric]
        missing = list(dict.fromkeys(p for p in prompts if p not in cache))
        if missing:
            with torch.inference_mode():
                feats = model.encode_text(getattr(model, "tokenize", tokenize)(missing).to(self.device))
            for p, f in zip(missing, feats, strict=True):
                cache[p] = f
        for p in prompts:
            cache.move_to_end(p)
        out = torch.stack([cache[p] for p in prompts])
        while len(cache) > self._text_cache_size:
            cache.popitem(last=False)
        return out

    @staticmethod
    def _derive(metric: str, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        if metric in DERIVED:
            inputs, fn = DERIVED[metric]
            return fn(*(scores[i] for i in inputs))
        return scores[metric]

    def _base_scores(
        self, metrics: Iterable[str], pixels: dict[str, torch.Tensor], prompts: list[str] | None
    ) -> dict[str, torch.Tensor]:
        """Scores of base `metrics` from normalised pixels on the device (mode -> [B,3,224,224])."""
        scores = {}
        image_features: dict[int, torch.Tensor] = {}  # one image pass per model instance (hp and hp_logit share)
        for m in metrics:
            model = self.models[m]
            if id(model) not in image_features:
                image_features[id(model)] = model.encode_image(pixels[getattr(model, "preprocess_mode", "crop")])
            feats = image_features[id(model)]
            output = {} if METRICS[m].output == "score" else {"output": METRICS[m].output}
            if getattr(model, "needs_prompt", False):
                if prompts is None:
                    raise ConfigError(f"prompts: metric {m!r} needs a prompt")
                text = self._text_features(m, prompts)
                if not torch.is_inference_mode_enabled():
                    text = text.clone()  # cached inference tensors cannot enter an autograd graph
                scores[m] = model.score_features(feats, text, **output)
            else:
                scores[m] = model.score_features(feats, **output)
        return scores

    @torch.inference_mode()
    def score_pixels(self, pixels: dict[str, torch.Tensor], prompts: list[str] | None) -> dict[str, torch.Tensor]:
        """Scores from preprocessed pixels (mode -> normalised [B,3,224,224]); float32 CPU tensors."""
        on_device = {mode: x.to(self.device, self.dtype, non_blocking=True) for mode, x in pixels.items()}
        scores = self._base_scores(self.models, on_device, prompts)
        return {m: self._derive(m, scores).float().cpu() for m in self.metrics}

    def preprocess(self, images: ImageInput | Sequence[ImageInput] | torch.Tensor) -> dict[str, torch.Tensor]:
        """Preprocess user images for every mode the models need (tensors on the torch path, others via PIL)."""
        if isinstance(images, torch.Tensor):
            with torch.no_grad():
                return {mode: preprocess_tensor(images.float(), mode) for mode in self.preprocess_modes}
        if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        policy = self.decode_policy
        pils = [to_pil(img, f"images[{i}]", policy) for i, img in enumerate(images)]
        if not pils:
            raise ValueError("images: the batch is empty")
        return {
            mode: torch.stack([preprocess_pil(p, mode, policy=policy) for p in pils]) for mode in self.preprocess_modes
        }

    def score(
        self, images, prompts: str | Sequence[str] | None = None, batch_size: int = 32
    ) -> dict[str, torch.Tensor]:
        """Scores per image for each metric ([B] float32 CPU tensors), computed in batches."""
        pixels = self.preprocess(images)
        n = next(iter(pixels.values())).shape[0]
        if n == 0:
            raise ValueError("images: the batch is empty")
        plist = prompts_for(prompts, n)
        if plist is None and self.needs_prompt:
            raise ConfigError(f"prompts: metrics {self.metrics} need a prompt")
        chunks = []
        for s in range(0, n, batch_size):
            chunk = {k: v[s : s + batch_size] for k, v in pixels.items()}
            chunks.append(self.score_pixels(chunk, plist[s : s + batch_size] if plist else None))
        return {m: torch.cat([c[m] for c in chunks]) for m in self.metrics}

    def reward(
        self, images: torch.Tensor, prompts: str | Sequence[str] | None = None, metric: str | None = None
    ) -> torch.Tensor:
        """Differentiable reward: float images in 0..1 ([B,3,H,W] or [B,H,W,3], any size) -> [B] on the device.

        Gradients flow to the pixels (and to any trainable model parameters); text features are cached.
        """
        metric = metric or self.metrics[-1]
        if metric not in self.metrics:
            raise ValueError(f"metric={metric!r}: this scorer computes {self.metrics}")
        plist = prompts_for(prompts, images.shape[0])
        needed = DERIVED[metric][0] if metric in DERIVED else (metric,)
        x = images.to(self.device)
        modes = {getattr(self.models[m], "preprocess_mode", "crop") for m in needed}
        pixels = {mode: preprocess_tensor(x, mode).to(self.dtype) for mode in modes}
        return self._derive(metric, self._base_scores(needed, pixels, plist))

    def score_files(
        self,
        items: Iterable[tuple[str, str | None]],
        batch_size: int = 32,
        num_workers: int | None = None,
        progress: bool = False,
        total: int | None = None,
        decode: str = "cpu",
        gpu_prefetch: int = 2,
    ) -> Iterator[dict]:
        """Score (image path, prompt) items with a background DataLoader; yields one row per item, in order.

        Rows: {"image", "prompt", <metric>: float ..., "error": None} or, for an unreadable image or a NaN/Inf
        score, {"image", "prompt", "error": "<message naming the file>"} (other images are scored as usual).
        `decode`: "cpu" = PIL-exact preprocessing (default); "gpu" = nvjpeg decode and torch preprocessing on the
        device (within `gpu_preprocess.DECODE_TOLERANCE` of the PIL path; "view" decode policy only); "auto" = gpu
        on CUDA with the "view" policy, else cpu.
        `num_workers`: decoding processes (None: sized from the core count, see `default_workers`).
        `gpu_prefetch`: with decode on the GPU, batches prepared ahead on a side CUDA stream (0: in series).
        """
        from icthp_core.data.batch import iter_file_batches
        from icthp_core.scoring.gpu_preprocess import default_workers, iter_gpu_batches, resolve_decode

        if self.decode_policy is DecodePolicy.UPSTREAM:
            if decode == "gpu":
                raise ConfigError('decode="gpu" (--decode gpu) decodes with the "view" policy only; use decode="cpu"')
            decode = "cpu"  # "auto" too: the GPU path has no upstream policy
        decode = resolve_decode(decode, self.device)
        if num_workers is None:
            num_workers = default_workers(self.device, decode)
        if decode == "gpu":
            batches = iter_gpu_batches(
                items,
                self.preprocess_modes,
                self.device,
                batch_size,
                num_workers,
                progress=progress,
                total=total,
                prefetch=gpu_prefetch,
            )
        else:
            batches = iter_file_batches(
                items,
                self.preprocess_modes,
                batch_size,
                num_workers,
                pin_memory=self.device.type == "cuda",
                progress=progress,
                total=total,
                policy=self.decode_policy,
            )
        for batch in batches:
            ok = [r for r in batch["rows"] if r["error"] is None]
            scores = {}
            if ok:
                prompts = [r["prompt"] for r in ok] if self.needs_prompt else None
                scores = self.score_pixels(batch["pixels"], prompts)
            k = 0
            for row in batch["rows"]:
                if row["error"] is None:
                    values = {m: float(scores[m][k]) for m in self.metrics}
                    k += 1
                    bad = [m for m, v in values.items() if not math.isfinite(v)]
                    if bad:
                        row["error"] = f"{row['image']}: non-finite score for {', '.join(bad)} (not written as NaN)"
                    else:
                        row.update(values)
                yield row


class ICTHPScorer(MultiScorer):
    """ICT, HP and ICT-HP = ICT x HP. ICT in [-1, 1] (~0.9 when the image contains the prompt), HP in (0, 1)."""

    @property
    def ict(self) -> nn.Module | None:
        return self.models.get("ict")

    @property
    def hp(self) -> nn.Module | None:
        return self.models.get("hp")


def load_scorer(
    ict: str | os.PathLike | None = METRICS["ict"].default_source,
    hp: str | os.PathLike | None = METRICS["hp"].default_source,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "fp32",
    decode_policy: str | DecodePolicy = DecodePolicy.VIEW,
) -> ICTHPScorer:
    """Load ICT and/or HP (hub ids or local dirs in the published layout); `None` skips a model.

    The scorer computes `ict`, `hp` and, when both are loaded, `ict_hp`. `decode_policy`: "view" (default) or
    "upstream" (see `MultiScorer`).
    """
    metrics = [m for m, src in (("ict", ict), ("hp", hp)) if src is not None]
    if not metrics:
        raise ValueError("load_scorer: give at least one of ict=..., hp=...")
    if len(metrics) == 2:
        metrics.append("ict_hp")
    sources = {m: os.fspath(src) for m, src in (("ict", ict), ("hp", hp)) if src is not None}
    return ICTHPScorer(metrics, sources, device=device, dtype=dtype, decode_policy=decode_policy)


__all__ = ["ICTHPScorer", "METRICS", "MultiScorer", "load_scorer", "prompts_for"]
