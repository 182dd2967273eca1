"""ICTHPSaveWithScores: save PNGs whose metadata carries the scores (optionally drawn on a small banner)."""

from __future__ import annotations

import json
import os

import folder_paths
import numpy as np
import torch
from comfy.cli_args import args
from comfy_api.latest import io, ui
from PIL import Image

from icthp_core.data.metadata import draw_banner, save_png
from icthp_core.scoring.records import banner_text, build_record

from .models import split_prompts
from .reward_nodes import CATEGORY, RewardModelType


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(np.clip(255.0 * image[..., :3].float().cpu().numpy(), 0, 255).astype(np.uint8))


def with_banner(images: torch.Tensor, rows: list[dict[str, float]], metrics: list[str]) -> torch.Tensor:
    """IMAGE batch with each image's scores drawn on a banner along its bottom edge."""
    out = [
        np.asarray(draw_banner(to_pil(im), banner_text(r, metrics)), dtype=np.float32) / 255.0
        for im, r in zip(images, rows, strict=True)
    ]
    return torch.from_numpy(np.stack(out))


class ICTHPSaveWithScores(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ICTHPSaveWithScores",
            display_name="ICT-HP Save Image (scores in metadata)",
            category=CATEGORY,
            description="Scores each image and saves it as PNG with the scores, metric names and ranges, model "
            "sources and prompt in its metadata (text chunk 'icthp_scores'; read back by "
            "`icthp score --from-metadata`), beside ComfyUI's workflow. Optionally draws a score banner.",
            is_output_node=True,
            inputs=[
                io.Image.Input("images"),
                RewardModelType.Input("reward_model"),
                io.String.Input("prompt", multiline=True, default=""),
                io.String.Input("filename_prefix", default="icthp/ComfyUI"),
                io.Boolean.Input("banner", default=False, tooltip="draw the scores on the saved image"),
                io.Boolean.Input("one_prompt_per_line", default=False),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="the images as saved (with the banner if asked)"),
                io.String.Output(display_name="records", is_output_list=True, tooltip="the JSON metadata of each"),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, images, reward_model, prompt, filename_prefix, banner=False, one_prompt_per_line=False):
        n = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim == 4 else 0
        prompts = split_prompts(prompt, n, one_prompt_per_line, reward_model.needs_prompt)
        scores = reward_model.score(images, prompts)
        metrics = [m for m in reward_model.metrics if m in scores]
        rows = [{m: float(scores[m][i]) for m in metrics} for i in range(n)]
        saved = with_banner(images, rows, metrics) if banner else images[..., :3]
        extra: dict[str, str] = {}
        if not args.disable_metadata:
            if cls.hidden is not None and cls.hidden.prompt:
                extra["prompt"] = json.dumps(cls.hidden.prompt)
            if cls.hidden is not None and cls.hidden.extra_pnginfo:
                extra.update({k: json.dumps(v) for k, v in cls.hidden.extra_pnginfo.items()})
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory(), saved.shape[2], saved.shape[1]
        )
        results, records = [], []
        normalize = getattr(reward_model, "normalize", None)
        for i in range(n):
            record = build_record(rows[i], prompts[i] or None, reward_model.name, reward_model.sources, normalize)
            file = f"{filename.replace('%batch_num%', str(i))}_{counter + i:05}_.png"
            save_png(to_pil(saved[i]), os.path.join(folder, file), record, extra)
            results.append(ui.SavedResult(file, subfolder, io.FolderType.output))
            records.append(json.dumps(record, sort_keys=True))
        return io.NodeOutput(saved, records, ui=ui.SavedImages(results))
