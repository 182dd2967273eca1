"""The reward server's request format (shared by the server, the client and the in-process reward; no Ray here).

POST /score, JSON: `{"images": [<base64 PNG/JPEG>, ...]}` or `{"array": {"shape": [B, H, W, 3], "dtype": "uint8",
"data": <base64 of the raw bytes>}}`, plus `"prompts": [...]` (one per image) or `"prompt": "..."` (all images), and
optionally `"metrics": [...]` (default: every metric the server computes).
POST /score, multipart/form-data: `image` file fields (repeatable), `prompt` fields (one, or one per image),
optional `metrics` (comma-separated).
Response: `{"scores": {<metric>: [float, ...]}, "metrics": [...], "count": B}`; errors: `{"error": "..."}` with 4xx.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from icthp_core.errors import ImageLoadError


class BadRequest(ValueError):
    """A payload the server refuses: HTTP `status` (400, 401, 413, ...) and a message naming the problem."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class ScoreRequest:
    images: list[Image.Image]
    prompts: list[str] | None
    metrics: list[str]


def _decode_b64(text: object, where: str) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(f"{where}: expected a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: not valid base64") from None


def _image_from_bytes(data: bytes, where: str) -> Image.Image:
    from icthp_core.data.images import decode_image

    try:
        return decode_image(data, name=where)
    except ImageLoadError as e:
        raise BadRequest(str(e)) from None


def array_to_images(arr: np.ndarray, where: str = "array") -> list[Image.Image]:
    """[B,H,W,3] (or [H,W,3]) uint8 -> RGB PIL images."""
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise BadRequest(f"{where}: expected uint8 [B,H,W,3], got {arr.dtype} {list(arr.shape)}")
    return [Image.fromarray(a) for a in arr]


def _check(
    images: list[Image.Image], prompts, metrics, served: Sequence[str], prompt_metrics: set[str], max_images: int
) -> ScoreRequest:
    if not images:
        raise BadRequest("no images in the request")
    if len(images) > max_images:
        raise BadRequest(f"{len(images)} images in one request; the limit is {max_images}", 413)
    metrics = list(metrics or served)
    unknown = [m for m in metrics if m not in served]
    if unknown:
        raise BadRequest(f"metrics {unknown} are not served; this server computes {list(served)}")
    if isinstance(prompts, str):
        prompts = [prompts] * len(images)
    if prompts is not None:
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise BadRequest("prompts: expected a list of strings")
        if len(prompts) == 1 and len(images) > 1:
            prompts = prompts * len(images)
        if len(prompts) != len(images):
            raise BadRequest(f"got {len(prompts)} prompts for {len(images)} images (give one, or one per image)")
    needs = [m for m in metrics if m in prompt_metrics]
    if needs and (prompts is None or any(not p.strip() for p in prompts)):
        raise BadRequest(f"metrics {needs} need a non-empty prompt for every image")
    return ScoreRequest(images, prompts, metrics)


def parse_json(body: bytes, served: Sequence[str], prompt_metrics: set[str], max_images: int) -> ScoreRequest:
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"body is not valid JSON ({e})") from None
    if not isinstance(payload, dict):
        raise BadRequest("body must be a JSON object")
    if "array" in payload:
        spec = payload["array"]
        if not isinstance(spec, dict) or not isinstance(spec.get("shape"), list):
            raise BadRequest("array: expected {shape: [B,H,W,3], dtype: 'uint8', data: base64}")
        if spec.get("dtype", "uint8") != "uint8":
            raise BadRequest(f"array.dtype {spec.get('dtype')!r}: only uint8 is accepted")
        data = _decode_b64(spec.get("data"), "array.data")
        shape = [int(s) for s in spec["shape"]]
        if int(np.prod(shape)) != len(data):
            raise BadRequest(f"array: {len(data)} bytes do not fill shape {shape}")
        if len(shape) == 4 and shape[0] > max_images:
            raise BadRequest(f"{shape[0]} images in one request; the limit is {max_images}", 413)
        images = array_to_images(np.frombuffer(data, np.uint8).reshape(shape))
    elif "images" in payload:
        if not isinstance(payload["images"], list):
            raise BadRequest("images: expected a list of base64 PNG/JPEG strings")
        if len(payload["images"]) > max_images:
            raise BadRequest(f"{len(payload['images'])} images in one request; the limit is {max_images}", 413)
        images = [
            _image_from_bytes(_decode_b64(s, f"images[{i}]"), f"images[{i}]") for i, s in enumerate(payload["images"])
        ]
    else:
        raise BadRequest("give 'images' (base64 PNG/JPEG list) or 'array' (raw uint8)")
    prompts = payload.get("prompts", payload.get("prompt"))
    metrics = payload.get("metrics")
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    if metrics is not None and not isinstance(metrics, list):
        raise BadRequest("metrics: expected a list of names")
    return _check(images, prompts, metrics, served, prompt_metrics, max_images)


def parse_multipart(form, served: Sequence[str], prompt_metrics: set[str], max_images: int) -> list:
    """From a starlette FormData: returns the same ScoreRequest (files are read by the caller: `(name, bytes)`)."""
    files, prompts, metrics = form["files"], form["prompts"], form["metrics"]
    if len(files) > max_images:
        raise BadRequest(f"{len(files)} images in one request; the limit is {max_images}", 413)
    images = [_image_from_bytes(data, f"image {name!r}") for name, data in files]
    metrics = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    return _check(images, prompts or None, metrics, served, prompt_metrics, max_images)


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

        from icthp_core.scoring.preprocess import to_nchw

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
