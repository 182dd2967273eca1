"""`explain(scorer, image, prompt, ...)`: words and regions for each metric, as tensors, with a JSON form."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from icthp_core.explain.common import ExplainError, check_metric, image_tensor, text_metrics
from icthp_core.explain.methods import METHODS, parse_methods
from icthp_core.explain.regions import default_grid, grid_to_image, occlusion, relevance_map, to_grid
from icthp_core.explain.words import word_contributions


@dataclass
class Explanation:
    """What `explain` returns for one image. Heatmaps are [H,W] float tensors over `image` (the working copy,
    [1,3,H,W] in 0..1); `grids` hold the same maps averaged on the occlusion grid; `words[metric]` the word table."""

    image: torch.Tensor
    prompt: str | None
    scores: dict[str, float] = field(default_factory=dict)
    heatmaps: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    grids: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    words: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-ready dict (grids as nested lists; the full-size heatmaps are left to the overlay images)."""
        return {
            "prompt": self.prompt,
            "size": list(self.image.shape[-2:]),
            "scores": self.scores,
            "words": self.words,
            "regions": {m: {k: v.tolist() for k, v in g.items()} for m, g in self.grids.items()},
            "seconds": self.seconds,
            "skipped": self.skipped,
        }


def _timed(seconds: dict, key: str, fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - t
    return out


def _regions(ex: Explanation, scorer, metric: str, methods, grid: int, batch_size: int, progress) -> None:
    x, p = ex.image, ex.prompt if text_metrics(metric) else None
    h, w = x.shape[-2:]
    ex.heatmaps[metric], ex.grids[metric] = {}, {}
    if "occlusion" in methods:
        drops, _ = _timed(ex.seconds, "occlusion", occlusion, scorer, metric, x, p, grid, batch_size, progress)
        ex.grids[metric]["occlusion"] = drops
        ex.heatmaps[metric]["occlusion"] = grid_to_image(drops, h, w)
    if "relevance" in methods:
        try:
            heat = _timed(ex.seconds, "relevance", relevance_map, scorer, metric, x, p)
        except ExplainError as e:
            ex.skipped[f"{metric}/relevance"] = str(e)
        else:
            ex.heatmaps[metric]["relevance"] = heat
            ex.grids[metric]["relevance"] = to_grid(heat, grid)


def explain(
    scorer,
    image,
    prompt: str | None = None,
    metrics: list[str] | None = None,
    methods=METHODS,
    grid: int | None = None,
    ig_steps: int = 32,
    batch_size: int = 16,
    progress=None,
) -> Explanation:
    """Explain the scores of one image: word contributions (prompt metrics) and region heatmaps (every metric).

    `scorer`: a MultiScorer (or ICTHPScorer); `metrics`: default all of the scorer's; `grid`: occlusion grid side
    (default 7 on the CPU, 14 on a GPU); `progress(done, total)`: called during occlusion.
    """
    methods = parse_methods(methods)
    metrics = list(metrics or scorer.metrics)
    for m in metrics:
        check_metric(scorer, m)
    grid = grid or default_grid(scorer.device)
    x = image_tensor(image)
    needs_prompt = any(text_metrics(m) for m in metrics)
    if needs_prompt and (prompt is None or not str(prompt).strip()):
        raise ExplainError(f"prompt: metrics {metrics} need a prompt")
    ex = Explanation(image=x, prompt=prompt)
    exact = scorer.score([image] if not isinstance(image, torch.Tensor) else x, prompt if needs_prompt else None)
    ex.scores = {m: float(exact[m][0]) for m in metrics}
    pixels = scorer.preprocess([image] if not isinstance(image, torch.Tensor) else x)
    pixels = {k: v.to(scorer.device, scorer.dtype) for k, v in pixels.items()}
    for m in metrics:
        if "words" in methods and text_metrics(m):
            ex.words[m] = _timed(ex.seconds, "words", word_contributions, scorer, pixels, prompt, m, ig_steps)
        if {"occlusion", "relevance"} & set(methods):
            _regions(ex, scorer, m, methods, grid, batch_size, progress)
    return ex
