"""ICTHPLoader, ICTHPScore and ICTHPBestOfN (V3 schema)."""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from icthp_core.scoring.selection import rank, select_batch, select_latent, select_mask

from .models import DEVICES, DTYPES, MODEL_CHOICES, RewardModel, baselines, load_reward_model, split_prompts
from .paths import source_fingerprint, source_options

CATEGORY = "ICT-HP"
RewardModelType = io.Custom("ICTHP_MODEL")


def metric_options() -> list[str]:
    return ["auto", "ict_hp", "ict", "hp", *baselines()]


def _format_table(scores: dict[str, torch.Tensor], metrics: list[str], prompts: list[str]) -> str:
    cols = [m for m in metrics if m in scores]
    lines = ["#  " + "  ".join(f"{c:>8}" for c in cols) + "  prompt"]
    for i in range(len(prompts)):
        p = prompts[i] if len(prompts[i]) <= 40 else prompts[i][:37] + "..."
        lines.append(f"{i:<3}" + "  ".join(f"{float(scores[c][i]):8.4f}" for c in cols) + f"  {p}")
    if len(prompts) > 1:
        lines.append("mean" + "".join(f"{float(scores[c].mean()):10.4f}" for c in cols))
    return "\n".join(lines)


class ICTHPLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ICTHPLoader",
            display_name="ICT-HP Reward Model Loader",
            category=CATEGORY,
            description="Loads the ICT / HP reward models (or a baseline) from models/icthp or the hub; "
            "ComfyUI moves it to the GPU when used and offloads it like other models.",
            inputs=[
                io.Combo.Input(
                    "model",
                    options=MODEL_CHOICES + baselines(),
                    default="ICT-HP",
                    tooltip="ICT-HP = ICT x HP (both models); or one model; or a baseline",
                ),
                io.Combo.Input(
                    "ict_source",
                    options=source_options("ict"),
                    tooltip="folder of models/icthp in the published ICT layout, or the hub id",
                ),
                io.Combo.Input(
                    "hp_source",
                    options=source_options("hp"),
                    tooltip="folder of models/icthp with hp_backbone/ and hp_scorer/, or the hub id",
                ),
                io.String.Input(
                    "baseline_source",
                    default="",
                    optional=True,
                    tooltip="baselines only: hub id or local path (empty = default)",
                ),
                io.Combo.Input("device", options=DEVICES, default="default"),
                io.Combo.Input("dtype", options=DTYPES, default="fp32"),
            ],
            outputs=[RewardModelType.Output(display_name="reward_model")],
        )

    @classmethod
    def execute(cls, model, ict_source, hp_source, device="default", dtype="fp32", baseline_source="") -> io.NodeOutput:
        return io.NodeOutput(load_reward_model(model, ict_source, hp_source, baseline_source or "", device, dtype))

    @classmethod
    def fingerprint_inputs(cls, model, ict_source, hp_source, baseline_source="", **kwargs):
        return (
            model,
            source_fingerprint(ict_source),
            source_fingerprint(hp_source),
            baseline_source,
            kwargs.get("device"),
            kwargs.get("dtype"),
        )


class ICTHPScore(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ICTHPScore",
            display_name="ICT-HP Score Images",
            category=CATEGORY,
            description="Per-image ICT, HP and ICT-HP scores of an IMAGE batch.",
            is_output_node=True,
            inputs=[
                RewardModelType.Input("reward_model"),
                io.Image.Input("images"),
                io.String.Input("prompt", multiline=True, default="", tooltip="not needed by HP and aesthetic"),
                io.Boolean.Input(
                    "one_prompt_per_line",
                    default=False,
                    tooltip="each non-empty line is the prompt of one image (in batch order)",
                ),
                io.Int.Input("batch_size", default=8, min=1, max=256),
            ],
            outputs=[
                io.Float.Output(
                    display_name="score",
                    is_output_list=True,
                    tooltip="the loaded model's main metric (ict_hp when both are loaded)",
                ),
                io.Float.Output(display_name="ict", is_output_list=True),
                io.Float.Output(display_name="hp", is_output_list=True),
                io.Float.Output(display_name="ict_hp", is_output_list=True),
                io.String.Output(display_name="table"),
            ],
        )

    @classmethod
    def execute(
        cls, reward_model: RewardModel, images, prompt, one_prompt_per_line=False, batch_size=8
    ) -> io.NodeOutput:
        n = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim == 4 else 0
        prompts = split_prompts(prompt, n, one_prompt_per_line, reward_model.needs_prompt)
        scores = reward_model.score(images, prompts, batch_size)

        def as_list(m: str) -> list[float]:
            return [float(v) for v in scores[m]] if m in scores else []

        table = _format_table(scores, reward_model.metrics, prompts)
        return io.NodeOutput(
            as_list(reward_model.primary),
            as_list("ict"),
            as_list("hp"),
            as_list("ict_hp"),
            table,
            ui=ui.PreviewText(table),
        )


class ICTHPBestOfN(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ICTHPBestOfN",
            display_name="ICT-HP Best-of-N",
            category=CATEGORY,
            description="Keeps the k best images of a batch (best first); LATENT and MASK inputs are "
            "re-indexed the same way. Ties keep batch order; k above the batch size keeps all.",
            is_output_node=True,
            inputs=[
                RewardModelType.Input("reward_model"),
                io.Image.Input("images"),
                io.String.Input("prompt", multiline=True, default="", tooltip="not needed by HP and aesthetic"),
                io.Int.Input("k", default=1, min=1, max=4096),
                io.Combo.Input(
                    "metric", options=metric_options(), default="auto", tooltip="auto = the loaded model's main metric"
                ),
                io.Boolean.Input("one_prompt_per_line", default=False),
                io.Int.Input("batch_size", default=8, min=1, max=256),
                io.Latent.Input("latent", optional=True, tooltip="re-indexed like the images"),
                io.Mask.Input("mask", optional=True, tooltip="re-indexed like the images"),
            ],
            outputs=[
                io.Image.Output(display_name="images"),
                io.Float.Output(display_name="scores", is_output_list=True),
                io.Latent.Output(display_name="latent"),
                io.Mask.Output(display_name="mask"),
                io.Image.Output(display_name="rejected_images"),
                io.Float.Output(display_name="rejected_scores", is_output_list=True),
                io.String.Output(display_name="summary"),
            ],
        )

    @classmethod
    def execute(
        cls,
        reward_model: RewardModel,
        images,
        prompt,
        k=1,
        metric="auto",
        one_prompt_per_line=False,
        batch_size=8,
        latent=None,
        mask=None,
    ) -> io.NodeOutput:
        n = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim == 4 else 0
        if latent is not None and latent["samples"].shape[0] != n:
            raise ValueError(f"LATENT has {latent['samples'].shape[0]} samples but IMAGE has {n} images")
        if mask is not None and mask.ndim >= 3 and mask.shape[0] not in (1, n):
            raise ValueError(f"MASK has batch {mask.shape[0]} but IMAGE has {n} images")
        prompts = split_prompts(prompt, n, one_prompt_per_line, reward_model.needs_prompt)
        scores = reward_model.score(images, prompts, batch_size)
        metric = reward_model.primary if metric == "auto" else metric
        if metric not in scores:
            raise ValueError(
                f"metric {metric!r} is not given by the loaded model {reward_model.name!r} (it gives {sorted(scores)})"
            )
        sel = rank(scores[metric], k)
        out_latent = select_latent(latent, sel.selected) if latent is not None else None
        out_mask = select_mask(mask, sel.selected, n) if mask is not None else None
        summary = f"{metric}: kept {len(sel.selected)} of {n}: " + ", ".join(
            f"#{i}={sel.scores[i]:.4f}" for i in sel.selected
        )
        if sel.rejected:
            summary += "\nrejected: " + ", ".join(f"#{i}={sel.scores[i]:.4f}" for i in sel.rejected)
        # nothing rejected (k >= batch size): block the nodes fed by `rejected_images` silently, as ComfyUI does for
        # outputs that have nothing to give, instead of sending them an empty IMAGE batch they cannot handle
        rejected = select_batch(images, sel.rejected) if sel.rejected else ExecutionBlocker(None)
        return io.NodeOutput(
            select_batch(images, sel.selected),
            sel.selected_scores,
            out_latent,
            out_mask,
            rejected,
            sel.rejected_scores,
            summary,
            ui=ui.PreviewText(summary),
        )
