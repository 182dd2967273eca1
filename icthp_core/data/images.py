"""Decoding user images (paths, bytes, PIL, numpy) into PIL images; the one place images are opened.

Every front end (CLI, Python API, app uploads, data sets: parquet, Hugging Face, WebDataset; `icthp serve`
requests, ComfyUI loaders of files) decodes through `decode_image`, so the same image gives the same pixels
everywhere. One set of limits (`ImageLimits`), checked *before* decoding:

- the pixel count, read from the header: images over `max_pixels` (default `DEFAULT_MAX_PIXELS`, override with
  the environment variable `ICTHP_MAX_PIXELS` or the argument) are refused;
- the encoded size: files, byte strings and archive members over `max_bytes` (default `DEFAULT_MAX_BYTES`,
  `ICTHP_MAX_IMAGE_BYTES`) are refused without being read.

`probe_image` applies both limits from the header alone (no pixel is decoded) and returns the size, for callers
that budget pixels before work (the reward server).

One policy (`DecodePolicy`) says how decoded pixels become RGB:

- "view" (default, what a person sees): EXIF orientation applied (as ComfyUI's LoadImage and phone viewers do);
  every Pillow mode becomes 8-bit RGB by scaling, never clipping: 16/32-bit integer greyscale (`I;16*`, `I`) is
  taken as 0..65535, float (`F`) as 0..1; alpha (RGBA, LA, PA, premultiplied, palette/RGB transparency) is
  composited on `ALPHA_BACKGROUND` (white). `decode_image` returns an RGB image.
- "upstream" (what the published reference code computes): no rotation, and `Image.convert("RGB")` (alpha
  dropped, 16-bit clipped) at the point where each upstream preprocessor does it — before resizing for CLIP's
  processor (ICT, HP, CLIP, PickScore, BLIP), after resizing for ImageReward and HPSv2 (see
  `icthp_core.data.preprocess`). `decode_image` returns the loaded image in its own mode; give it to
  `preprocess_pil(..., policy="upstream")`.

Any failure (not only Pillow's own errors: a malformed TIFF raises TypeError) becomes one `ImageLoadError` whose
message names the item.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from icthp_core.errors import ConfigError, ImageLoadError

#: file suffixes taken as images when a folder is expanded or an upload is checked
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: default pixel-count limit (width x height), checked before decoding; ~40 MP = a 7,300 x 5,500 photo
DEFAULT_MAX_PIXELS = 40_000_000
#: environment variable that overrides DEFAULT_MAX_PIXELS
MAX_PIXELS_ENV = "ICTHP_MAX_PIXELS"
#: default limit on an encoded image (file, bytes, archive member), checked before reading it: 512 MiB
DEFAULT_MAX_BYTES = 512 * 1024 * 1024
#: environment variable that overrides DEFAULT_MAX_BYTES
MAX_BYTES_ENV = "ICTHP_MAX_IMAGE_BYTES"
#: colour that transparent pixels are composited on
ALPHA_BACKGROUND = (255, 255, 255)

ImageSource = str | os.PathLike | bytes


class DecodePolicy(str, Enum):
    """How decoded pixels become RGB (see the module docstring): "view" (default) or "upstream"."""

    VIEW = "view"
    UPSTREAM = "upstream"


#: the policy names, for command-line choices
DECODE_POLICIES = tuple(p.value for p in DecodePolicy)


def parse_decode_policy(value: str | DecodePolicy | None, where: str = "decode_policy") -> DecodePolicy:
    """`value` as a DecodePolicy (None: the default "view"); ConfigError naming `where` for an unknown name."""
    if value is None:
        return DecodePolicy.VIEW
    try:
        return DecodePolicy(value)
    except ValueError:
        raise ConfigError(f"{where}={value!r}: expected one of {', '.join(DECODE_POLICIES)}") from None


def _env_limit(env: str, default: int, what: str) -> int:
    text = os.environ.get(env)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ImageLoadError(f"${env}={text!r}: expected a whole number of {what}") from None
    if value < 1:
        raise ImageLoadError(f"${env}={text!r}: must be >= 1")
    return value


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel-count limit in force: `max_pixels`, else $ICTHP_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    if max_pixels is not None:
        return int(max_pixels)
    return _env_limit(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS, "pixels")


def max_bytes_limit(max_bytes: int | None = None) -> int:
    """The encoded-size limit in force: `max_bytes`, else $ICTHP_MAX_IMAGE_BYTES, else DEFAULT_MAX_BYTES."""
    if max_bytes is not None:
        return int(max_bytes)
    return _env_limit(MAX_BYTES_ENV, DEFAULT_MAX_BYTES, "bytes")


@dataclass(frozen=True)
class ImageLimits:
    """The limits every decode enforces before decoding: pixels (from the header) and encoded bytes."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def resolve(cls, max_pixels: int | None = None, max_bytes: int | None = None) -> ImageLimits:
        """The limits in force: the arguments, else the environment variables, else the defaults."""
        return cls(max_pixels_limit(max_pixels), max_bytes_limit(max_bytes))

    def check_bytes(self, size: int, where: str) -> None:
        """ImageLoadError naming `where` when an encoded image of `size` bytes is over `max_bytes`."""
        if size > self.max_bytes:
            raise ImageLoadError(
                f"{where}: {size:,} bytes is over the limit of {self.max_bytes:,} bytes "
                f"(set ${MAX_BYTES_ENV} to raise it)"
            )

    def check_size(self, w: int, h: int, where: str) -> None:
        """ImageLoadError naming `where` for an image without pixels or over `max_pixels`."""
        if w < 1 or h < 1:
            raise ImageLoadError(f"{where}: image has no pixels ({w}x{h})")
        if w * h > self.max_pixels:
            raise ImageLoadError(
                f"{where}: {w}x{h} = {w * h:,} pixels is over the limit of {self.max_pixels:,} "
                f"(set ${MAX_PIXELS_ENV} to raise it)"
            )


def display_name(name: str) -> str:
    """`name` printable on any terminal: undecodable file-name bytes shown as \\xNN (display only)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_bytes(source: object) -> bool:
    return isinstance(source, (bytes, bytearray, memoryview))


def _source_name(source: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    return "<image bytes>" if _is_bytes(source) else os.fspath(source)


def to_rgb(img: Image.Image, background: tuple[int, int, int] = ALPHA_BACKGROUND) -> Image.Image:
    """8-bit RGB from any Pillow mode: scaled (not clipped) high bit depths, alpha composited on `background`."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        arr = np.clip(arr, 0, 65535) / 257.0
        return Image.fromarray(np.round(arr).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0)
        return Image.fromarray(np.round(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8), "L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


@contextmanager
def _opened(source: ImageSource, where: str, limits: ImageLimits) -> Iterator[BinaryIO]:
    """A binary file object for a path or bytes, after the emptiness and encoded-size checks."""
    if _is_bytes(source):
        if len(source) == 0:
            raise ImageLoadError(f"{where}: empty file")
        limits.check_bytes(len(source), where)
        with io.BytesIO(bytes(source)) as fh:
            yield fh
        return
    path = Path(source)
    if path.is_dir():
        raise ImageLoadError(f"{where}: is a folder, not an image file")
    size = path.stat().st_size
    if size == 0:
        raise ImageLoadError(f"{where}: empty file")
    limits.check_bytes(size, where)
    with open(path, "rb") as fh:
        yield fh


@contextmanager
def _errors_named(source: ImageSource, where: str, limits: ImageLimits) -> Iterator[None]:
    """Turn any exception inside into one ImageLoadError naming `where` (never another exception type)."""
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # corrupt-EXIF and bomb warnings: the limits and errors decide
            yield
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(f"{where}: no such file") from None
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{where}: over the limit of {limits.max_pixels:,} pixels (Pillow: {e})") from None
    except MemoryError:
        raise ImageLoadError(f"{where}: not enough memory to decode") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{where}: not an image (unrecognised format)") from None
    except RecursionError:
        raise ImageLoadError(f"{where}: cannot decode image (nested too deeply)") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is this item's error, never the run's
        detail = str(e).splitlines()[0] if str(e) else ""
        if not _is_bytes(source):
            detail = detail.replace(os.fspath(source), where)  # the caller's name only (the app hides server paths)
        raise ImageLoadError(f"{where}: cannot decode image ({type(e).__name__}: {detail})") from e


def probe_image(
    source: ImageSource, name: str | None = None, max_pixels: int | None = None, limits: ImageLimits | None = None
) -> tuple[int, int]:
    """(width, height) of a file or encoded bytes read from the header only (no pixel decoded), after the checks
    `decode_image` makes before decoding (encoded size, pixel count). ImageLoadError naming the item otherwise."""
    where = _source_name(source, name)
    limits = limits or ImageLimits.resolve(max_pixels)
    with _errors_named(source, where, limits), _opened(source, where, limits) as fh, Image.open(fh) as img:
        w, h = img.size
        limits.check_size(w, h, where)
        return w, h


def decode_image(
    source: ImageSource,
    name: str | None = None,
    max_pixels: int | None = None,
    background: tuple[int, int, int] = ALPHA_BACKGROUND,
    *,
    policy: str | DecodePolicy = DecodePolicy.VIEW,
    limits: ImageLimits | None = None,
) -> Image.Image:
    """Decode a file path or encoded bytes to a fully loaded PIL image.

    Args:
        source: a path or the encoded bytes of an image.
        name: how the image is named in errors (default: the path, or "<image bytes>").
        max_pixels: the pixel limit (default: $ICTHP_MAX_PIXELS or DEFAULT_MAX_PIXELS); ignored with `limits`.
        background: the colour alpha is composited on ("view" policy).
        policy: "view" (default): EXIF orientation applied, RGB with alpha on `background`; "upstream": no
            rotation, the image in its own mode, for `preprocess_pil(..., policy="upstream")`.
        limits: the pixel and byte limits (default: `ImageLimits.resolve(max_pixels)`).

    Raises ImageLoadError naming the item for a missing, empty, undecodable or over-limit image; never any other
    exception.
    """
    where = _source_name(source, name)
    policy = parse_decode_policy(policy)
    limits = limits or ImageLimits.resolve(max_pixels)
    with _errors_named(source, where, limits), _opened(source, where, limits) as fh:
        img = Image.open(fh)
        limits.check_size(*img.size, where)
        img.load()  # decode now, so truncated files fail here
        if policy is DecodePolicy.UPSTREAM:
            return img  # as `Image.open(path)` hands it to the upstream preprocessors
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img, background)


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image file as RGB; raise ImageLoadError naming the path on any failure."""
    return decode_image(path, max_pixels=max_pixels)


def check_image(source: ImageSource, name: str | None = None, max_pixels: int | None = None) -> str | None:
    """Why `source` cannot be scored (the ImageLoadError message), or None when it decodes within the limits."""
    try:
        decode_image(source, name=name, max_pixels=max_pixels)
    except ImageLoadError as e:
        return str(e)
    return None


def to_pil(image: object, where: str = "image", policy: str | DecodePolicy = DecodePolicy.VIEW) -> Image.Image:
    """A path, encoded bytes, PIL image or numpy HWC array (uint8, or float in 0..1) as a PIL image: RGB under the
    "view" policy; under "upstream", paths, bytes and PIL images keep their mode (see `decode_image`)."""
    policy = parse_decode_policy(policy)
    if isinstance(image, (str, os.PathLike)):
        return decode_image(image, policy=policy)
    if isinstance(image, (bytes, bytearray)):
        return decode_image(bytes(image), name=where, policy=policy)
    if isinstance(image, Image.Image):
        return image if policy is DecodePolicy.UPSTREAM else to_rgb(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
            raise ImageLoadError(f"{where}: expected a HxWxC array, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating):
                raise ImageLoadError(f"{where}: expected uint8 or float array, got {arr.dtype}")
            arr = (np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        if arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        return Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    raise ImageLoadError(
        f"{where}: unsupported image type {type(image).__name__} (path, bytes, PIL image, numpy array or tensor)"
    )


def is_image_name(name: str | os.PathLike) -> bool:
    """Whether the file name has one of IMAGE_SUFFIXES."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def expand_paths(inputs: list[str | os.PathLike]) -> list[str]:
    """Expand directories into their image files (sorted, non-recursive); keep files as given."""
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out.extend(str(f) for f in sorted(p.iterdir()) if is_image_name(f) and f.is_file())
        else:
            out.append(os.fspath(item))
    return out
