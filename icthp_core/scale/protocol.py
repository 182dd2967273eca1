"""The reward server's request format (shared by the server, the client and the in-process reward; no Ray here).

POST /score, JSON: `{"images": [<base64 PNG/JPEG>, ...]}` or `{"array": {"shape": [B, H, W, 3], "dtype": "uint8",
"data": <base64 of the raw bytes>}}`, plus `"prompts": [...]` (one per image) or `"prompt": "..."` (all images), and
optionally `"metrics": [...]` (default: every metric the server computes).
POST /score, multipart/form-data: `image` file fields (repeatable), `prompt` fields (one, or one per image),
optional `metrics` (comma-separated).
Response: `{"scores": {<metric>: [float, ...]}, "metrics": [...], "count": B}`; errors: `{"error": "..."}` with 4xx
naming the field (`images[3]`, `array.shape`, `prompts`, ...).

Parsing reads only image headers: each image's size is checked against the per-image pixel limit, and the request's
image count and total charge against its budgets, before anything is decoded (`ImageItem.decode` does that later).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from icthp_core.errors import ImageLoadError
from icthp_core.scale.serve_config import ServeLimits

#: JSON integers longer than this are not converted (Python refuses > 4,300 digits); the field gets named instead
MAX_INT_DIGITS = 30


class BadRequest(ValueError):
    """A payload the server refuses: HTTP `status` (400, 401, 413, 503, ...) and a message naming the field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


#: pixel weight by header mode: decoding to RGB (EXIF rotation included) peaks at about 12 bytes per pixel for 8-bit
#: modes, 24 for alpha and 16/32-bit integer modes, 33 for float images (measured; `BYTES_PER_PIXEL` = 14 per weight)
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "RGBA", "LA", "PA", "RGBa", "La")


def decode_weight(mode: str, info: dict) -> int:
    """How many charged pixels one pixel of an image of this header mode costs to decode (1, 2 or 3)."""
    if mode == "F":
        return 3
    return 2 if mode in _WIDE_MODES or "transparency" in info else 1


class _HugeNumber(str):
    """A JSON integer too long to convert: kept as text, so the field it sits in is reported."""


@dataclass
class ImageItem:
    """One image of a request, not decoded yet: its header size and its encoded bytes or raw HWC uint8 array."""

    where: str
    width: int
    height: int
    data: bytes | None = None
    array: np.ndarray | None = None
    weight: int = 1  # decode_weight of its header mode

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def decode(self, max_pixels: int) -> Image.Image:
        """The RGB image (the file decoder: EXIF, 16-bit, alpha, pixel limit); BadRequest naming it on failure."""
        if self.array is not None:
            return Image.fromarray(self.array)
        from icthp_core.data.images import decode_image

        try:
            return decode_image(self.data or b"", name=self.where, max_pixels=max_pixels)
        except ImageLoadError as e:
            raise BadRequest(str(e), 413 if "over the limit" in str(e) else 400) from None


@dataclass
class ScoreRequest:
    items: list[ImageItem]
    prompts: list[str] | None
    metrics: list[str]
    charge: int = 0  # pixels charged against the budgets (header sizes x decode weight + preprocessed copies)
    images: list[Image.Image] | None = None  # filled by `decode_all` (the server decodes item by item instead)

    def decode_all(self, max_pixels: int) -> ScoreRequest:
        """Decode every image now (BadRequest naming the first that fails); for tools and tests."""
        self.images = [item.decode(max_pixels) for item in self.items]
        return self


def _decode_b64(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(f"{where}: expected a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: not valid base64") from None


def probe_image(data: bytes, where: str, max_pixels: int) -> ImageItem:
    """Read only the header of encoded image bytes, with the file decoder's checks and words (`probe_image` of
    `icthp_core.data.images`): 413 over `max_pixels`, 400 for anything else wrong; its mode gives the weight."""
    from icthp_core.data.images import ImageLimits
    from icthp_core.data.images import probe_image as probe_header

    if not data:
        raise BadRequest(f"{where}: empty image")
    try:
        w, h = probe_header(data, name=where, limits=ImageLimits(max_pixels=max_pixels))
        with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as img:  # the header again, for its mode
            warnings.simplefilter("ignore")
            weight = decode_weight(img.mode, img.info)
    except ImageLoadError as e:
        raise BadRequest(str(e), 413 if "over the limit" in str(e) else 400) from None
    return ImageItem(where, w, h, data=data, weight=weight)


def _too_many(n: int, limits: ServeLimits) -> None:
    if n > limits.max_images:
        raise BadRequest(f"{n} images in one request; the limit is {limits.max_images}", 413)


def _shape(spec: dict) -> list[int]:
    shape = spec.get("shape")
    ok = isinstance(shape, list) and len(shape) in (3, 4) and all(type(s) is int for s in shape)
    if not ok:
        shown = "a number too long to read" if any(isinstance(s, _HugeNumber) for s in shape or []) else repr(shape)
        raise BadRequest(f"array.shape: expected [B, H, W, 3] (whole numbers), got {shown[:80]}")
    shape = [1, *shape] if len(shape) == 3 else shape
    if shape[3] != 3 or min(shape) < 1:
        raise BadRequest(f"array.shape: expected [B, H, W, 3] with every size >= 1, got {shape}")
    return shape


def array_items(spec: object, limits: ServeLimits) -> list[ImageItem]:
    """The `array` field: shape and budgets checked before its data is decoded."""
    if not isinstance(spec, dict):
        raise BadRequest("array: expected {shape: [B,H,W,3], dtype: 'uint8', data: base64}")
    if spec.get("dtype", "uint8") != "uint8":
        raise BadRequest(f"array.dtype {str(spec.get('dtype'))[:40]!r}: only uint8 is accepted")
    b, h, w, c = _shape(spec)
    _too_many(b, limits)
    if w * h > limits.max_image_pixels:
        raise BadRequest(
            f"array.shape: {w}x{h} = {w * h:,} pixels is over the limit of {limits.max_image_pixels:,} per image", 413
        )
    data = _decode_b64(spec.get("data"), "array.data")
    if b * h * w * c != len(data):
        raise BadRequest(f"array: {len(data)} bytes do not fill shape {[b, h, w, c]}")
    arr = np.frombuffer(data, np.uint8).reshape(b, h, w, c)
    return [ImageItem(f"array[{i}]", w, h, array=arr[i]) for i in range(b)]


def image_items(value: object, limits: ServeLimits) -> list[ImageItem]:
    """The `images` field (base64 PNG/JPEG/... list): each header probed, nothing decoded."""
    if not isinstance(value, list):
        raise BadRequest(f"images: expected a list of base64 image strings, got {type(value).__name__}")
    _too_many(len(value), limits)
    return [
        probe_image(_decode_b64(s, f"images[{i}]"), f"images[{i}]", limits.max_image_pixels)
        for i, s in enumerate(value)
    ]


def _prompts(prompts: object, n: int, key: str) -> list[str] | None:
    if prompts is None:
        return None
    if isinstance(prompts, str):
        return [prompts] * n
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise BadRequest(f"{key}: expected a string or a list of strings")
    if len(prompts) == 1 and n > 1:
        prompts = prompts * n
    if len(prompts) != n:
        raise BadRequest(f"got {len(prompts)} prompts for {n} images (give one, or one per image)")
    return prompts


def _metrics(metrics: object, served: Sequence[str]) -> list[str]:
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if metrics is None or metrics == []:
        return list(served)
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise BadRequest("metrics: expected a list of metric names")
    unknown = [m for m in metrics if m not in served]
    if unknown:
        raise BadRequest(f"metrics {unknown}: not served; this server computes {list(served)}")
    return list(dict.fromkeys(metrics))


def _check(
    items: list[ImageItem],
    prompts: object,
    prompt_key: str,
    metrics: object,
    served: Sequence[str],
    prompt_metrics: set[str],
    limits: ServeLimits,
    per_image_extra: int,
) -> ScoreRequest:
    if not items:
        raise BadRequest("no images in the request")
    _too_many(len(items), limits)
    charge = sum(it.width * it.height * it.weight + per_image_extra for it in items)
    if charge > limits.max_request_pixels:
        raise BadRequest(
            f"request: {len(items)} images charge {charge:,} pixels (sizes, x2 for alpha/16-bit, x3 for float, + "
            f"{per_image_extra:,} per image for preprocessing), over the limit of {limits.max_request_pixels:,} "
            "per request; send fewer or smaller images",
            413,
        )
    metric_list = _metrics(metrics, served)
    prompt_list = _prompts(prompts, len(items), prompt_key)
    needs = [m for m in metric_list if m in prompt_metrics]
    if needs and (prompt_list is None or any(not p.strip() for p in prompt_list)):
        raise BadRequest(f"metrics {needs} need a non-empty prompt for every image")
    return ScoreRequest(items, prompt_list, metric_list, charge)


def _load_json(body: bytes) -> object:
    try:
        return json.loads(body, parse_int=lambda s: int(s) if len(s) <= MAX_INT_DIGITS else _HugeNumber(s))
    except RecursionError:
        raise BadRequest("body: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise BadRequest(f"body is not valid JSON ({str(e)[:200]})") from None


def parse_json(
    body: bytes,
    served: Sequence[str],
    prompt_metrics: set[str],
    limits: ServeLimits | None = None,
    per_image_extra: int = 0,
    *,
    max_images: int | None = None,
) -> ScoreRequest:
    """A JSON `/score` body -> ScoreRequest (headers probed, budgets checked); BadRequest naming the field.

    The older call `parse_json(body, served, prompt_metrics, max_images=N)` (default limits otherwise) also decodes
    every image, as it did before budgets existed, so `req.images` is filled and decode errors are raised here."""
    if limits is None:
        req = parse_json(body, served, prompt_metrics, ServeLimits(max_images=max_images or 256), per_image_extra)
        return req.decode_all(ServeLimits().max_image_pixels)
    payload = _load_json(body)
    if not isinstance(payload, dict):
        raise BadRequest("body must be a JSON object")
    if "array" in payload:
        items = array_items(payload["array"], limits)
    elif "images" in payload:
        items = image_items(payload["images"], limits)
    else:
        raise BadRequest("give 'images' (base64 PNG/JPEG list) or 'array' (raw uint8)")
    key = "prompts" if "prompts" in payload else "prompt"
    args = (payload.get(key), key, payload.get("metrics"), served, prompt_metrics, limits, per_image_extra)
    return _check(items, *args)


def parse_multipart(
    files: list[tuple[str, bytes]],
    prompts: list[str],
    metrics: object,
    served: Sequence[str],
    prompt_metrics: set[str],
    limits: ServeLimits,
    per_image_extra: int = 0,
) -> ScoreRequest:
    """Multipart `image` files (`(name, bytes)`), `prompt` fields and `metrics` -> ScoreRequest."""
    _too_many(len(files), limits)
    if metrics is not None and not isinstance(metrics, str):
        raise BadRequest("metrics: expected a comma-separated text field")
    items = [probe_image(data, f"image {name!r}", limits.max_image_pixels) for name, data in files]
    return _check(items, prompts or None, "prompt", metrics, served, prompt_metrics, limits, per_image_extra)


def parse_metrics_text(text: str) -> dict[str, float]:
    """Counters from `/metrics` text (labels dropped): handy for tests and dashboards without Prometheus."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name.split("{")[0]] = float(value)
    return out


# ---------------------------------------------------------------------------------------------------- client side
def to_uint8_batch(images) -> list[np.ndarray]:
    """PIL images, uint8 arrays ([H,W,3] or [B,H,W,3]) or float tensors/arrays in 0..1 ([B,3,H,W] or [B,H,W,3])
    -> a list of uint8 HWC arrays (floats are rounded as `to_pil` does)."""
    if hasattr(images, "detach"):  # torch tensor
        import torch

        from icthp_core.data.preprocess import to_nchw

        x = to_nchw(images.detach().float().cpu())
        arr = (torch.clamp(x, 0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return list(arr)
    if isinstance(images, np.ndarray):
        arr = images[None] if images.ndim == 3 else images
        if arr.ndim != 4:
            raise ValueError(f"images: expected [B,H,W,3] or [H,W,3], got shape {images.shape}")
        if arr.shape[-1] != 3 and arr.shape[1] == 3:
            arr = arr.transpose(0, 2, 3, 1)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0, 1) * 255.0 + 0.5).astype(np.uint8)
        return list(arr)
    if isinstance(images, Image.Image):
        images = [images]
    out = []
    for i, img in enumerate(images):
        if isinstance(img, Image.Image):
            out.append(np.asarray(img.convert("RGB")))
        else:
            out.extend(to_uint8_batch(np.asarray(img) if not hasattr(img, "detach") else img[None]))
        if not out:
            raise ValueError(f"images[{i}]: unsupported type {type(img).__name__}")
    return out


def encode_request(arrays: list[np.ndarray], prompts, metrics: Sequence[str] | None) -> dict:
    """A JSON payload: one raw uint8 array when all images share a shape, else base64 PNGs."""
    payload: dict = {}
    if len({a.shape for a in arrays}) == 1:
        batch = np.ascontiguousarray(np.stack(arrays))
        payload["array"] = {
            "shape": list(batch.shape),
            "dtype": "uint8",
            "data": base64.b64encode(batch.tobytes()).decode(),
        }
    else:
        pngs = []
        for a in arrays:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, "PNG")
            pngs.append(base64.b64encode(buf.getvalue()).decode())
        payload["images"] = pngs
    if prompts is not None:
        payload["prompts" if not isinstance(prompts, str) else "prompt"] = (
            prompts if isinstance(prompts, str) else list(prompts)
        )
    if metrics:
        payload["metrics"] = list(metrics)
    return payload
