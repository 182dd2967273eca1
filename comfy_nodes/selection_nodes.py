"""ICTHPRewardMix (weighted multi-reward model) and ICTHPSelect (threshold / top-k over lists of batches)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from icthp_core.scoring.selection import (
    NORMALIZATIONS,
    ON_EMPTY,
    combine_scores,
    parse_reference,
    parse_weights,
    select,
    select_batch,
    select_latent,
    select_mask,
)

from .models import RewardModel, split_prompts
from .reward_nodes import CATEGORY, RewardModelType, metric_options


@dataclass
class WeightedReward:
    """An ``ICTHP_MODEL`` value combining several loaded reward models: its primary metric ``weighted`` is
    ``sum_m w_m * z(m)`` (see ``icthp_core.scoring.selection.combine_scores``); the parts' metrics come along."""

    parts: list[RewardModel]
    weights: dict[str, float]
    normalize: str = "batch"
    reference: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = [m for p in self.parts for m in p.metrics]
        dup = sorted({m for m in given if given.count(m) > 1})
        if dup:
            raise ValueError(f"metrics {dup} are given by more than one reward model; connect each metric once")
        unknown = [m for m in self.weights if m not in given]
        if unknown:
            raise ValueError(f"weights name {unknown}, which the connected models do not give (they give {given})")
        bad = {m: w for m, w in self.weights.items() if not math.isfinite(w)}
        if bad:
            raise ValueError(f"weights {bad}: a weight must be a finite number")
        if self.normalize == "reference":
            parse = [m for m in self.weights if m not in self.reference]
            if parse:
                raise ValueError(f"normalize=reference: no 'metric:mean:std' statistics for {parse}")

    @property
    def name(self) -> str:
        return " + ".join(f"{w:g}*{m}" for m, w in self.weights.items())

    @property
    def metrics(self) -> list[str]:
        return ["weighted", *[m for p in self.parts for m in p.metrics]]

    @property
    def primary(self) -> str:
        return "weighted"

    @property
    def needs_prompt(self) -> bool:
        return any(p.needs_prompt for p in self.parts)

    @property
    def sources(self) -> dict[str, str]:
        return {f"{p.name}:{k}": v for p in self.parts for k, v in p.sources.items()}

    def score(self, images: torch.Tensor, prompts: list[str], batch_size: int = 8) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for p in self.parts:
            out.update(p.score(images, prompts, batch_size))
        out["weighted"] = combine_scores(out, self.weights, self.normalize, self.reference)
        return out


class ICTHPRewardMix(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ICTHPRewardMix",
            display_name="ICT-HP Reward Mix (weighted)",
            category=CATEGORY,
            description="Combines loaded reward models into one ICTHP_MODEL whose main metric 'weighted' is a "
            "weighted sum of z-normalised metrics (within the batch, or by given reference statistics).",
            inputs=[
                RewardModelType.Input("reward_model_1"),
                RewardModelType.Input("reward_model_2", optional=True),
                RewardModelType.Input("reward_model_3", optional=True),
                io.String.Input(
                    "weights",
                    default="ict_hp:1.0",
                    tooltip="metric:weight pairs, e.g. 'ict_hp:1.0, imagereward:0.5'",
                ),
                io.Combo.Input(
                    "normalize",
                    options=list(NORMALIZATIONS),
                    default="batch",
                    tooltip="batch = z-score within the scored batch; reference = (x-mean)/std from below; none = raw",
                ),
                io.String.Input(
                    "reference_stats",
                    default="",
                    optional=True,
                    tooltip="for normalize=reference: metric:mean:std pairs, e.g. 'ict_hp:0.70:0.05'",
                ),
            ],
            outputs=[RewardModelType.Output(display_name="reward_model")],
        )

    @classmethod
    def execute(
        cls, reward_model_1, weights, normalize, reward_model_2=None, reward_model_3=None, reference_stats=""
    ) -> io.NodeOutput:
        parts = [p for p in (reward_model_1, reward_model_2, reward_model_3) if p is not None]
        ref = parse_reference(reference_stats or "")
        return io.NodeOutput(WeightedReward(parts, parse_weights(weights), normalize, ref))


class ICTHPSelect(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ICTHPSelect",
            display_name="ICT-HP Select (threshold, lists)",
            category=CATEGORY,
            description="Scores every image of one or more IMAGE batches (a ComfyUI list), keeps those at or above "
            "the threshold, at most k, best first; latents and masks given as lists of the same length follow. "
            "Outputs one item per kept image.",
            is_input_list=True,
            is_output_node=True,
            inputs=[
                RewardModelType.Input("reward_model"),
                io.Image.Input("images", tooltip="one IMAGE batch or a list of batches"),
                io.String.Input("prompt", multiline=True, default=""),
                io.Int.Input("k", default=4, min=1, max=4096),
                io.Combo.Input("metric", options=metric_options() + ["weighted"], default="auto"),
                io.Boolean.Input("use_threshold", default=False),
                io.Float.Input("threshold", default=0.0, min=-1e6, max=1e6, step=0.001),
                io.Combo.Input(
                    "on_empty",
                    options=list(ON_EMPTY),
                    default="keep_best",
                    tooltip="nothing passed the threshold: keep the single best anyway, output nothing, or stop "
                    "the workflow with an error",
                ),
                io.Latent.Input("latent", optional=True),
                io.Mask.Input("mask", optional=True),
            ],
            outputs=[
                io.Image.Output(display_name="images", is_output_list=True),
                io.Latent.Output(display_name="latents", is_output_list=True),
                io.Mask.Output(display_name="masks", is_output_list=True),
                io.Float.Output(display_name="scores", is_output_list=True),
                io.String.Output(display_name="indices", is_output_list=True, tooltip="'list#:batch#' of each"),
                io.String.Output(display_name="summary"),
            ],
        )

    @classmethod
    def execute(
        cls,
        reward_model,
        images,
        prompt,
        k,
        metric,
        use_threshold,
        threshold,
        on_empty,
        latent=None,
        mask=None,
    ) -> io.NodeOutput:
        rm, prompt, k, metric = reward_model[0], prompt[0], k[0], metric[0]
        thr = threshold[0] if use_threshold[0] else None
        res = select_lists(rm, images, prompt, k, metric, thr, on_empty[0], latent, mask)
        if not res[0]:
            # nothing kept (on_empty=empty): an empty list output would make ComfyUI call the nodes fed by it with
            # no image (IndexError); block them silently instead, as ComfyUI does for outputs with nothing to give
            res = (*[ExecutionBlocker(None)] * 5, res[-1])
        return io.NodeOutput(*res, ui=ui.PreviewText(res[-1]))


def select_lists(rm, images: list, prompt: str, k: int, metric: str, threshold, on_empty, latents=None, masks=None):
    """Selection over a list of IMAGE batches, keeping (list index, batch index) with every output."""
    for name, other in (("latent", latents), ("mask", masks)):
        if other is not None and len(other) != len(images):
            raise ValueError(f"{len(other)} {name} inputs for {len(images)} IMAGE batches (give one per batch)")
    items: list[tuple[int, int]] = []
    scores_all: list[float] = []
    metric = rm.primary if metric == "auto" else metric
    for li, batch in enumerate(images):
        n = batch.shape[0]
        if latents is not None and latents[li]["samples"].shape[0] != n:
            raise ValueError(f"list item {li}: LATENT has {latents[li]['samples'].shape[0]} samples, IMAGE has {n}")
        scores = rm.score(batch, split_prompts(prompt, n, False, rm.needs_prompt))
        if metric not in scores:
            raise ValueError(f"metric {metric!r} is not given by {rm.name!r} (it gives {sorted(scores)})")
        items += [(li, b) for b in range(n)]
        scores_all += [float(v) for v in scores[metric]]
    sel = select(scores_all, k, threshold, on_empty)
    out_images, out_latents, out_masks, idx = [], [], [], []
    for i in sel.selected:
        li, b = items[i]
        n = images[li].shape[0]
        out_images.append(select_batch(images[li], [b]))
        if latents is not None:
            out_latents.append(select_latent(latents[li], [b]))
        if masks is not None:
            out_masks.append(select_mask(masks[li], [b], n))
        idx.append(f"{li}:{b}")
    thr = f", threshold {threshold}" if threshold is not None else ""
    summary = f"{metric}: kept {len(sel.selected)} of {len(items)}{thr}: " + ", ".join(
        f"{items[i][0]}:{items[i][1]}={sel.scores[i]:.4f}" for i in sel.selected
    )
    if not sel.selected:
        summary += "nothing passed"
    return out_images, out_latents, out_masks, sel.selected_scores, idx, summary
