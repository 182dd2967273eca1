"""ICTHPExplain: heatmap overlays and a word table that say why each image of a batch scores as it does."""

from __future__ import annotations

import comfy.model_management as mm
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image

from icthp_core.explain.api import explain
from icthp_core.explain.common import ensure_autograd_weights, text_metrics
from icthp_core.explain.render import overlay

from .models import RewardModel, check_images, split_prompts
from .reward_nodes import CATEGORY, RewardModelType, metric_options

REGION_METHODS = ["occlusion", "relevance"]


def _table(i: int, metric: str, ex, top_words: int) -> list[str]:
    lines = [f"#{i} {metric}={ex.scores[metric]:.4f}"]
    table = ex.words.get(metric)
    if table:
        for w in table["words"][:top_words]:
            drop = "   n/a" if w["removal_drop"] is None else f"{w['removal_drop']:+.4f}"
            ig = "   n/a" if w["ig"] is None else f"{w['ig']:+.4f}"
            lines.append(f"   {w['word'][:20]:<20} drop {drop}  ig {ig}  {w['reading']}")
    lines += [f"   skipped {k}: {v}" for k, v in ex.skipped.items()]
    return lines


class ICTHPExplain(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ICTHPExplain",
            display_name="ICT-HP Explain Scores",
            category=CATEGORY,
            description="Why each image scores as it does: a heatmap overlay per image (occlusion: score drop when "
            "each patch is hidden, grid^2 + 1 passes; relevance: gradient-weighted attention, one forward+backward) "
            "and a table of the prompt's words (score drop when removed, integrated gradients, contained or not).",
            is_output_node=True,
            inputs=[
                RewardModelType.Input("reward_model"),
                io.Image.Input("images", tooltip="e.g. the images output of ICT-HP Best-of-N"),
                io.String.Input("prompt", multiline=True, default="", tooltip="not needed by HP and aesthetic"),
                io.Combo.Input("metric", options=metric_options(), default="auto"),
                io.Combo.Input("method", options=REGION_METHODS, default="occlusion"),
                io.Int.Input("grid", default=0, min=0, max=32, tooltip="occlusion grid side; 0 = 7 on CPU, 14 on GPU"),
                io.Int.Input("ig_steps", default=32, min=0, max=256, tooltip="integrated-gradients steps (0: off)"),
                io.Int.Input("top_words", default=8, min=1, max=77),
                io.Boolean.Input("one_prompt_per_line", default=False),
            ],
            outputs=[
                io.Image.Output(display_name="overlays"),
                io.String.Output(display_name="table"),
            ],
        )

    @classmethod
    def execute(
        cls,
        reward_model: RewardModel,
        images,
        prompt,
        metric="auto",
        method="occlusion",
        grid=0,
        ig_steps=32,
        top_words=8,
        one_prompt_per_line=False,
    ) -> io.NodeOutput:
        check_images(images)
        metric = reward_model.primary if metric == "auto" else metric
        if metric not in reward_model.metrics:
            raise ValueError(f"metric {metric!r} is not given by the loaded model {reward_model.name!r}")
        n = images.shape[0]
        needs = bool(text_metrics(metric))
        prompts = split_prompts(prompt, n, one_prompt_per_line, needs)
        device = reward_model.load()
        for model in reward_model.impl.models.values():  # a move under inference mode makes inference tensors
            ensure_autograd_weights(model)
        arrays = np.clip(255.0 * images[..., :3].float().cpu().numpy(), 0, 255).astype(np.uint8)
        pbar = comfy.utils.ProgressBar(n)
        outs, lines = [], []
        for i in range(n):
            mm.throw_exception_if_processing_interrupted()
            methods = (["words"] if needs else []) + [method]
            ex = explain(
                reward_model.impl, arrays[i], prompts[i] if needs else None, [metric], methods,
                grid or (14 if device.type == "cuda" else 7), ig_steps,
            )  # fmt: skip
            base = Image.fromarray(arrays[i])
            heat = ex.heatmaps[metric].get(method)
            pic = overlay(base, heat) if heat is not None else base
            outs.append(torch.from_numpy(np.asarray(pic, dtype=np.float32) / 255.0))
            lines += _table(i, metric, ex, top_words)
            pbar.update(1)
        text = "\n".join(lines)
        return io.NodeOutput(torch.stack(outs), text, ui=ui.PreviewText(text))
