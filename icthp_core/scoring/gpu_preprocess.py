"""GPU-first decoding and preprocessing for batch scoring: nvjpeg JPEG decode, resize/crop/normalise in torch.

`--decode gpu` (or `auto` on a CUDA device): background workers only read file bytes (and decode non-JPEG formats
with PIL), a thread decodes each batch of JPEGs at once with `torchvision.io.decode_jpeg(device="cuda")` and
preprocesses it on the device with the same torch ops as `preprocess_tensor` (bicubic with antialiasing, as PIL
downscales), on a side CUDA stream, up to `prefetch` batches ahead of the model. The default `cpu` path is the
PIL-exact one (`preprocess_pil`), which evaluation keeps.

Tolerance against the PIL path (`DECODE_TOLERANCE`): the two paths differ by PIL's rounding of the resized image to
uint8 and by the JPEG decoders' chroma upsampling (nvjpeg vs libjpeg). Measured on an H200 (`bench/gpu_check.py`,
128 JPEGs of 512-1024 px at quality 90 + PNGs): mean |Δ| 0.34/255 (crop) and 0.26/255 (letterbox) of the [0, 1]
pixels, max 2.9/255; scores of tiny random models within 5e-4. `tests/core/scoring/test_gpu_preprocess.py` checks the
same torch ops on the CPU (torchvision's CPU JPEG decoder) against `DECODE_TOLERANCE`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from icthp_core.data.batch import ordered_loader, with_progress
from icthp_core.data.images import load_image
from icthp_core.data.preprocess import preprocess_tensor
from icthp_core.errors import ConfigError, ImageLoadError

DECODE_CHOICES = ("auto", "cpu", "gpu")
# Bounds of the GPU/torch path against the PIL path, in [0, 1] pixel units before normalisation
DECODE_TOLERANCE = {"pixel_mean_abs": 1.0 / 255, "pixel_max_abs": 8.0 / 255}
_JPEG_MAGIC = b"\xff\xd8\xff"


def resolve_decode(decode: str, device: torch.device | str) -> str:
    """'cpu' or 'gpu' for `--decode {auto,cpu,gpu}`: auto = gpu on a CUDA device, else cpu."""
    if decode not in DECODE_CHOICES:
        raise ConfigError(f"decode={decode!r}: expected one of {DECODE_CHOICES}")
    is_cuda = torch.device(device).type == "cuda"
    if decode == "gpu" and not is_cuda:
        raise ConfigError(f"--decode gpu needs a CUDA device (got device={device})")
    if decode == "auto":
        return "gpu" if is_cuda else "cpu"
    return decode


def is_jpeg(data: bytes | memoryview) -> bool:
    return bytes(data[:3]) == _JPEG_MAGIC


def pil_to_uint8(img) -> torch.Tensor:
    """An RGB PIL image as a uint8 [3, H, W] tensor."""
    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def read_encoded(path: str | os.PathLike, jpeg_raw: bool = True) -> tuple[str, torch.Tensor]:
    """('jpeg', encoded bytes as uint8 [N]) for JPEG files when `jpeg_raw`, else ('pixels', uint8 [3, H, W]) decoded
    by PIL. Raises ImageLoadError naming the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageLoadError(f"{p}: no such file") from None
    except OSError as e:
        raise ImageLoadError(f"{p}: cannot read ({e})") from e
    if not data:
        raise ImageLoadError(f"{p}: empty file")
    if jpeg_raw and is_jpeg(data):
        return "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return "pixels", pil_to_uint8(load_image(p))


def decode_jpegs(datas: Sequence[torch.Tensor], device: torch.device | str) -> list[torch.Tensor | Exception]:
    """Decode encoded JPEGs (uint8 [N] tensors) to RGB uint8 [3, H, W] on `device`, batched (nvjpeg on CUDA).

    A file the batched call cannot decode is retried alone; what still fails comes back as the exception.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not datas:
        return []
    try:
        out = decode_jpeg(list(datas), mode=ImageReadMode.RGB, device=device)
        return list(out)
    except RuntimeError:
        pass
    res: list[torch.Tensor | Exception] = []
    for d in datas:
        try:
            res.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as e:
            res.append(e)
    return res


def preprocess_uint8(images: Sequence[torch.Tensor], mode: str = "crop", size: int = 224) -> torch.Tensor:
    """uint8 [3, H, W] images (any sizes, on one device) -> normalised float32 [B, 3, size, size] on that device.

    Images of equal size are resized together; the ops are `preprocess_tensor`'s (bicubic, antialiased).
    """
    if not images:
        raise ValueError("images: the batch is empty")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    out = torch.empty(len(images), 3, size, size, device=images[0].device)
    for idx in groups.values():
        x = torch.stack([images[i] for i in idx]).float().div_(255.0)
        out[idx] = preprocess_tensor(x, mode, size)
    return out


class EncodedItems(Dataset):
    """(path, prompt) -> (path, prompt, kind, tensor | None, error | None): JPEG bytes, or PIL-decoded pixels."""

    def __init__(self, items: Sequence[tuple[str, str | None]]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, prompt = self.items[i]
        try:
            kind, t = read_encoded(path)
            return path, prompt, kind, t, None
        except ImageLoadError as e:
            return path, prompt, None, None, str(e)


def _collate(samples: list) -> list:
    return samples


def _prepare(samples: list, modes: Sequence[str], device: torch.device) -> dict:
    """One batch of EncodedItems samples -> {"rows", "pixels"} on `device` (decode, PIL fallback, preprocess)."""
    rows = [{"image": p, "prompt": pr, "error": err} for p, pr, _, _, err in samples]
    jpeg_idx = [i for i, s in enumerate(samples) if s[2] == "jpeg"]
    decoded = decode_jpegs([samples[i][3] for i in jpeg_idx], device)
    images: dict[int, torch.Tensor] = {}
    for i, res in zip(jpeg_idx, decoded, strict=True):
        if isinstance(res, Exception):  # e.g. CMYK or 12-bit JPEG: PIL decodes what nvjpeg rejects
            try:
                images[i] = pil_to_uint8(load_image(samples[i][0])).to(device)
            except ImageLoadError as e:
                rows[i]["error"] = str(e)
        else:
            images[i] = res
    for i, s in enumerate(samples):
        if s[2] == "pixels":
            t = s[3].pin_memory() if device.type == "cuda" else s[3]
            images[i] = t.to(device, non_blocking=True)
    ok = [i for i in range(len(samples)) if i in images and rows[i]["error"] is None]
    pixels = {m: preprocess_uint8([images[i] for i in ok], m) for m in modes} if ok else {}
    return {"rows": rows, "pixels": pixels}


def _prefetched(loader, modes: Sequence[str], device: torch.device, depth: int) -> Iterator[dict]:
    """Decode + preprocess up to `depth` batches ahead in a thread on a side CUDA stream, overlapping the model."""
    import queue
    import threading

    stream = torch.cuda.Stream(device)
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            with torch.cuda.stream(stream):
                for samples in loader:
                    if stop.is_set():
                        return
                    batch = _prepare(samples, modes, device)
                    done = torch.cuda.Event()
                    done.record(stream)
                    q.put((batch, done))
            q.put(None)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    worker = threading.Thread(target=produce, name="icthp-gpu-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            batch, done = item
            current = torch.cuda.current_stream(device)
            current.wait_event(done)
            for x in batch["pixels"].values():
                x.record_stream(current)  # the allocator must not reuse it before the model is done
            yield batch
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()


def iter_gpu_batches(
    items: Sequence[tuple[str, str | None]],
    modes: Sequence[str],
    device: torch.device | str,
    batch_size: int = 32,
    num_workers: int = 2,
    progress: bool = False,
    total: int | None = None,
    prefetch: int = 2,
) -> Iterator[dict]:
    """Batches `{"rows": [...], "pixels": {mode: [b,3,224,224] on device}}` in item order, as `iter_file_batches`.

    Workers read the bytes; JPEGs are decoded batched on `device`; files the GPU decoder rejects fall back to PIL;
    unreadable files become rows with an `error` naming the file. On CUDA, `prefetch` batches are decoded and
    preprocessed ahead on a side stream while the caller runs the model (0: in series).
    """
    device = torch.device(device)
    loader = ordered_loader(EncodedItems(items), batch_size, num_workers, _collate)
    if device.type == "cuda" and prefetch > 0:
        batches = _prefetched(loader, modes, device, prefetch)
    else:
        batches = (_prepare(samples, modes, device) for samples in loader)
    yield from with_progress(batches, total if total is not None else len(items), progress)


def default_workers(device: torch.device | str, decode: str) -> int:
    """Decode workers sized from the core count: leave the model cores free on small CPU-only machines."""
    cores = os.cpu_count() or 1
    if torch.device(device).type == "cpu":
        return 0 if cores <= 2 else min(4, cores // 4)
    return min(8 if decode == "gpu" else 16, max(1, cores - 2))
