"""CLIP image preprocessing, for PIL images (upstream-faithful) and for tensors (differentiable).

"crop" (ICT, HP, CLIP, PickScore, aesthetic): resize the shortest side to 224 with bicubic, center crop, scale
to [0, 1], normalise with the OpenAI mean/std — as `CLIPImageProcessor`.
"letterbox" (HPSv2): resize the longest side to 224 with bicubic, pad with black to a square, normalise.
"imagereward" (ImageReward): as "crop" but centred as torchvision's `CenterCrop` (offset round((s - 224) / 2)).
"blip" (BLIP ITC/ITM): resize to 384 x 384 with bicubic (aspect not kept), normalise, as `BlipImageProcessor`.

Decode policy (`icthp_core.data.images.DecodePolicy`): under "view" a non-RGB image is made RGB first (`to_rgb`:
alpha on white, high bit depths scaled). Under "upstream" it is `Image.convert("RGB")` where the upstream code
does it: first for "crop" and "blip" (CLIPImageProcessor / BlipImageProcessor convert before resizing), after the
resize (and pad or crop) for "imagereward" (ImageReward's torchvision transform) and "letterbox" (HPSv2's
open_clip transform), which resize the image in its own mode (palette images then resample as nearest).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from icthp_core.data.images import DecodePolicy, parse_decode_policy, to_rgb

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_MEAN_NP, _STD_NP = np.asarray(OPENAI_MEAN, dtype=np.float32), np.asarray(OPENAI_STD, dtype=np.float32)
MODES = ("crop", "letterbox", "imagereward", "blip")
#: output side of each mode
MODE_SIZE = {"crop": 224, "letterbox": 224, "imagereward": 224, "blip": 384}


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")


def _normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(OPENAI_MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std = torch.tensor(OPENAI_STD, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


#: up to this aspect ratio the full resize is done (bit-identical to CLIPImageProcessor); beyond, only the crop
MAX_FULL_RESIZE_ASPECT = 4


def _resize_center_crop(img: Image.Image, size: int, torchvision_centre: bool = False) -> Image.Image:
    """Shortest side to `size` (bicubic, the other side rounded down as CLIPImageProcessor), then the centre crop.

    The crop offset is transformers' `(new - size) // 2`, or torchvision's `round((new - size) / 2)`.
    Ordinary images (aspect ratio <= MAX_FULL_RESIZE_ASPECT) are resized whole, exactly as CLIPImageProcessor.
    Longer ones resample only the source region under the crop, in the same pass order (horizontal, then
    vertical) and with the same filter windows, so memory stays O(size x short side) for any shape; pixels
    then differ from the full resize by at most 2 grey levels on under 2% of pixels (PIL keeps box corners in
    float32; tests/core/data/test_reliability_images.py measures it).
    """
    w, h = img.size
    new = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    if torchvision_centre:
        left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    else:
        left, top = (new[0] - size) // 2, (new[1] - size) // 2  # as transformers' center_crop
    bicubic = Image.Resampling.BICUBIC
    if max(new) <= MAX_FULL_RESIZE_ASPECT * size:
        return img.resize(new, bicubic).crop((left, top, left + size, top + size))
    if w <= h:  # tall: full horizontal pass on the rows the vertical filter reads, then the vertical crop window
        sy = h / new[1]
        y0, y1 = top * sy, (top + size) * sy
        margin = math.ceil(2 * max(sy, 1.0)) + 2  # bicubic support is 2 output pixels
        r0, r1 = max(0, math.floor(y0) - margin), min(h, math.ceil(y1) + margin)
        rows = img.crop((0, r0, w, r1)).resize((size, r1 - r0), bicubic)
        return rows.resize((size, size), bicubic, box=(0, y0 - r0, size, y1 - r0))
    sx = w / new[0]  # wide: horizontal pass over the crop window only, then the full vertical pass
    cols = img.resize((size, h), bicubic, box=(left * sx, 0, (left + size) * sx, h))
    return cols.resize((size, size), bicubic)


def _letterbox(img: Image.Image, size: int) -> Image.Image:
    """Longest side to `size` (bicubic), centred on a black square (palette images: index 0, as torchvision pads)."""
    w, h = img.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = img.resize(new, Image.Resampling.BICUBIC)
    canvas = Image.new(img.mode, (size, size), 0)
    if img.mode == "P":
        canvas.putpalette(img.getpalette() or [])
    canvas.paste(img, ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


def _geometry(img: Image.Image, mode: str, size: int) -> Image.Image:
    if mode == "blip":
        return img.resize((size, size), Image.Resampling.BICUBIC)
    if mode in ("crop", "imagereward"):
        return _resize_center_crop(img, size, torchvision_centre=mode == "imagereward")
    return _letterbox(img, size)


#: modes whose upstream preprocessor resizes before converting to RGB (torchvision / open_clip transforms)
RESIZE_BEFORE_RGB = ("imagereward", "letterbox")


def preprocess_pil(
    img: Image.Image, mode: str = "crop", size: int | None = None, policy: str | DecodePolicy = DecodePolicy.VIEW
) -> torch.Tensor:
    """A normalised float32 tensor [3, size, size] from a PIL image (size: the mode's own by default).

    `policy`: how a non-RGB image becomes RGB (module docstring); "upstream" expects the image as
    `decode_image(..., policy="upstream")` returns it (its own mode, not rotated).
    """
    _check_mode(mode)
    size = size or MODE_SIZE[mode]
    if parse_decode_policy(policy) is DecodePolicy.VIEW:
        img = _geometry(to_rgb(img), mode, size)
    elif mode in RESIZE_BEFORE_RGB:
        img = _geometry(img, mode, size).convert("RGB")
    else:
        img = _geometry(img.convert("RGB"), mode, size)
    # normalised in numpy, values identical to `_normalize`: torch's intra-op thread pool costs ~20x the work on
    # one small image when the decoding runs in the main process of a loaded machine (docs/benchmarks.md)
    x = (np.asarray(img, dtype=np.float32) / 255.0 - _MEAN_NP) / _STD_NP
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def to_nchw(images: torch.Tensor) -> torch.Tensor:
    """Accept [B,3,H,W] or ComfyUI-style [B,H,W,3] (or a single image without B); return float [B,3,H,W]."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"images: expected a 4-D tensor [B,3,H,W] or [B,H,W,3], got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3, 4):
        images = images[..., :3].permute(0, 3, 1, 2)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.shape[1] != 3:
        raise ValueError(f"images: expected 3 channels, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images: expected a float tensor in 0..1, got {images.dtype}")
    return images


def preprocess_tensor(images: torch.Tensor, mode: str = "crop", size: int | None = None) -> torch.Tensor:
    """Differentiable preprocessing of float images in 0..1 ([B,3,H,W] or [B,H,W,3]) to normalised [B,3,size,size].

    Bicubic with antialiasing (like PIL when downscaling); gradients flow to the input pixels.
    """
    _check_mode(mode)
    size = size or MODE_SIZE[mode]
    x = to_nchw(images)
    h, w = x.shape[-2:]
    if mode == "blip":
        if (h, w) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    elif mode in ("crop", "imagereward"):
        new = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        if (h, w) != new:
            x = F.interpolate(x, size=new, mode="bicubic", align_corners=False, antialias=True)
        if mode == "crop":
            top, left = (new[0] - size) // 2, (new[1] - size) // 2
        else:
            top, left = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
        x = x[..., top : top + size, left : left + size]
    else:
        scale = size / max(h, w)
        new = (round(h * scale), round(w * scale))
        if (h, w) != new:
            x = F.interpolate(x, size=new, mode="bicubic", align_corners=False, antialias=True)
        pad_h, pad_w = size - new[0], size - new[1]
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
    return _normalize(x.clamp(0, 1))
