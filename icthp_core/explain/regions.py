"""Region heatmaps of image scores: occlusion on a patch grid (model-agnostic, batched) and attention relevance
mapped from each model's input view back onto the image."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from icthp_core.data.preprocess import MODE_SIZE
from icthp_core.explain.attention import relevance
from icthp_core.explain.common import ExplainError, metric_fn

Progress = Callable[[int, int], None]


def default_grid(device: torch.device | str) -> int:
    """Occlusion grid side: 14 x 14 (~200 passes) on a GPU, 7 x 7 (~50 passes) on the CPU."""
    return 14 if torch.device(device).type == "cuda" else 7


def cell_bounds(size: int, grid: int) -> list[tuple[int, int]]:
    """`grid` contiguous [start, end) ranges covering `size` pixels."""
    edges = torch.linspace(0, size, grid + 1).round().long().tolist()
    return list(zip(edges[:-1], edges[1:], strict=True))


def fill_value(image: torch.Tensor) -> torch.Tensor:
    """What a removed patch becomes: the image's mean colour [1,3,1,1]."""
    return image.mean(dim=(-2, -1), keepdim=True)


def masked(image: torch.Tensor, masks: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Copies of `image` [1,3,H,W] with the pixels where `masks` [K,H,W] is True set to `fill`."""
    return torch.where(masks[:, None], fill, image)


def cell_masks(h: int, w: int, grid: int, cells: list[list[int]]) -> torch.Tensor:
    """Boolean masks [K,H,W]: mask k covers the grid cells `cells[k]` (cell index = row * grid + col)."""
    rows, cols = cell_bounds(h, grid), cell_bounds(w, grid)
    out = torch.zeros(len(cells), h, w, dtype=torch.bool)
    for k, idx in enumerate(cells):
        for c in idx:
            (r0, r1), (c0, c1) = rows[c // grid], cols[c % grid]
            out[k, r0:r1, c0:c1] = True
    return out


@torch.no_grad()
def batched_scores(f, images: torch.Tensor, batch_size: int, progress: Progress | None = None) -> torch.Tensor:
    """f over [K,3,H,W] in chunks; `progress(done, total)` after each chunk."""
    out = []
    for s in range(0, images.shape[0], batch_size):
        out.append(f(images[s : s + batch_size]).float().cpu())
        if progress is not None:
            progress(min(s + batch_size, images.shape[0]), images.shape[0])
    return torch.cat(out)


def occlusion(
    scorer, metric: str, image: torch.Tensor, prompt: str | None, grid: int, batch_size: int = 16, progress=None
) -> tuple[torch.Tensor, float]:
    """Score drop when each cell of a grid x grid partition of `image` [1,3,H,W] is filled with the mean colour.

    One pass for the image plus grid^2 passes, batched. Returns (drops [grid, grid], score of the image).
    """
    if grid < 1:
        raise ExplainError(f"grid={grid}: must be >= 1")
    f = metric_fn(scorer, metric, prompt)
    h, w = image.shape[-2:]
    fill = fill_value(image)
    drops, base = [], None
    cells = list(range(grid * grid))
    done = 0
    for s in range(0, len(cells), batch_size):
        chunk = masked(image, cell_masks(h, w, grid, [[c] for c in cells[s : s + batch_size]]), fill)
        if base is None:
            chunk = torch.cat([image, chunk])
        scores = batched_scores(f, chunk, chunk.shape[0])
        if base is None:
            base, scores = float(scores[0]), scores[1:]
        drops.append(base - scores)
        done += len(scores)
        if progress is not None:
            progress(done, len(cells))
    return torch.cat(drops).reshape(grid, grid), base


def view_to_image(view_map: torch.Tensor, mode: str, h: int, w: int) -> torch.Tensor:
    """A map [g,g] over a model's input view (preprocessing `mode`) placed on the image canvas [h,w]: zero where the
    model does not look (outside the centre crop, letterbox padding)."""
    size = MODE_SIZE[mode]
    v = F.interpolate(view_map[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    out = torch.zeros(h, w)
    if mode == "blip":
        return F.interpolate(v[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    if mode in ("crop", "imagereward"):
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        out[top : top + s, left : left + s] = F.interpolate(v[None, None], size=(s, s), mode="bilinear")[0, 0]
        return out
    scale = size / max(h, w)  # letterbox: the content region of the padded view
    nh, nw = round(h * scale), round(w * scale)
    top, left = (size - nh) // 2, (size - nw) // 2
    content = v[top : top + nh, left : left + nw]
    return F.interpolate(content[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]


def grid_to_image(grid_map: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """An occlusion grid [g,g] upsampled to [h,w] (each cell keeps its value)."""
    g = grid_map.shape[0]
    out = torch.zeros(h, w)
    for i, (r0, r1) in enumerate(cell_bounds(h, g)):
        for j, (c0, c1) in enumerate(cell_bounds(w, g)):
            out[r0:r1, c0:c1] = grid_map[i, j]
    return out


def relevance_map(scorer, metric: str, image: torch.Tensor, prompt: str | None) -> torch.Tensor:
    """Attention relevance of `metric` on the image canvas [H,W] (sum over the metric's towers)."""
    h, w = image.shape[-2:]
    maps = relevance(scorer, metric, image, prompt)
    total = torch.zeros(h, w)
    for m, rel in maps.items():
        total += view_to_image(rel[0], getattr(scorer.models[m], "preprocess_mode", "crop"), h, w)
    return total


def to_grid(heat: torch.Tensor, grid: int) -> torch.Tensor:
    """Mean of a pixel map [H,W] over each cell of a grid x grid partition -> [grid, grid]."""
    h, w = heat.shape
    out = torch.zeros(grid, grid)
    for i, (r0, r1) in enumerate(cell_bounds(h, grid)):
        for j, (c0, c1) in enumerate(cell_bounds(w, grid)):
            out[i, j] = heat[r0:r1, c0:c1].mean()
    return out
