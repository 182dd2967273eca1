"""Decoding user images (paths, bytes, PIL, numpy) into RGB PIL images; the one place images are opened.

Every front end (CLI, Python API, app, data sets, ComfyUI loaders of files) decodes through `decode_image`, so the
same file gives the same pixels everywhere:

- the pixel count is checked from the header *before* decoding: images over `max_pixels` (default
  `DEFAULT_MAX_PIXELS`, override with the environment variable `ICTHP_MAX_PIXELS` or the argument) are refused;
- EXIF orientation is applied (as ComfyUI's LoadImage and phone viewers do);
- every Pillow mode becomes 8-bit RGB by scaling, never clipping: 16/32-bit integer greyscale (`I;16*`, `I`) is
  taken as 0..65535, float (`F`) as 0..1; alpha (RGBA, LA, PA, premultiplied, palette/RGB transparency) is
  composited on `ALPHA_BACKGROUND` (white);
- any failure (not only Pillow's own errors: a malformed TIFF raises TypeError) becomes one `ImageLoadError`
  whose message names the file.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from icthp_core.errors import ImageLoadError

#: file suffixes taken as images when a folder is expanded or an upload is checked
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: default pixel-count limit (width x height), checked before decoding; ~40 MP = a 7,300 x 5,500 photo
DEFAULT_MAX_PIXELS = 40_000_000
#: environment variable that overrides DEFAULT_MAX_PIXELS
MAX_PIXELS_ENV = "ICTHP_MAX_PIXELS"
#: colour that transparent pixels are composited on
ALPHA_BACKGROUND = (255, 255, 255)

ImageSource = str | os.PathLike | bytes


def max_pixels_limit(max_pixels: int | None = None) -> int:
    """The pixel-count limit in force: `max_pixels`, else $ICTHP_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    if max_pixels is not None:
        return int(max_pixels)
    env = os.environ.get(MAX_PIXELS_ENV)
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ImageLoadError(f"${MAX_PIXELS_ENV}={env!r}: expected a whole number of pixels") from None
        if value < 1:
            raise ImageLoadError(f"${MAX_PIXELS_ENV}={env!r}: must be >= 1")
        return value
    return DEFAULT_MAX_PIXELS


def display_name(name: str) -> str:
    """`name` printable on any terminal: undecodable file-name bytes shown as \\xNN (display only)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _source_name(source: ImageSource, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<image bytes>"
    return os.fspath(source) if not isinstance(source, bytes) else "<image bytes>"


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


def decode_image(
    source: ImageSource,
    name: str | None = None,
    max_pixels: int | None = None,
    background: tuple[int, int, int] = ALPHA_BACKGROUND,
) -> Image.Image:
    """Decode a file path or encoded bytes to an RGB PIL image (EXIF orientation applied, fully loaded).

    `name`: how the image is named in errors (default: the path). Raises ImageLoadError naming it for a missing,
    empty, undecodable or over-limit image; never any other exception.
    """
    where = _source_name(source, name)
    limit = max_pixels_limit(max_pixels)
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageLoadError(f"{where}: empty file")
            fh = io.BytesIO(bytes(source))
        else:
            path = Path(source)
            if path.is_dir():
                raise ImageLoadError(f"{where}: is a folder, not an image file")
            if path.stat().st_size == 0:
                raise ImageLoadError(f"{where}: empty file")
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        with fh, warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")  # corrupt-EXIF and bomb warnings: the limit and errors below decide
            with Image.open(fh) as img:
                w, h = img.size
                if w < 1 or h < 1:
                    raise ImageLoadError(f"{where}: image has no pixels ({w}x{h})")
                if w * h > limit:
                    raise ImageLoadError(
                        f"{where}: {w}x{h} = {w * h:,} pixels is over the limit of {limit:,} "
                        f"(set ${MAX_PIXELS_ENV} to raise it)"
                    )
                img.load()  # decode now, so truncated files fail here
                img = ImageOps.exif_transpose(img) or img
                return to_rgb(img, background)
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(f"{where}: no such file") from None
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{where}: over the limit of {limit:,} pixels (Pillow: {e})") from None
    except MemoryError:
        raise ImageLoadError(f"{where}: not enough memory to decode") from None
    except UnidentifiedImageError:
        raise ImageLoadError(f"{where}: not an image (unrecognised format)") from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is this file's error, never the run's
        detail = str(e).splitlines()[0] if str(e) else ""
        if not isinstance(source, (bytes, bytearray, memoryview)):
            detail = detail.replace(os.fspath(source), where)  # the caller's name only (the app hides server paths)
        raise ImageLoadError(f"{where}: cannot decode image ({type(e).__name__}: {detail})") from e


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image file as RGB; raise ImageLoadError naming the path on any failure."""
    return decode_image(path, max_pixels=max_pixels)


def check_image(source: ImageSource, name: str | None = None, max_pixels: int | None = None) -> str | None:
    """Why `source` cannot be scored (the ImageLoadError message), or None when it decodes within the limit."""
    try:
        decode_image(source, name=name, max_pixels=max_pixels)
    except ImageLoadError as e:
        return str(e)
    return None


def to_pil(image: object, where: str = "image") -> Image.Image:
    """A path, encoded bytes, PIL image or numpy HWC array (uint8, or float in 0..1) as an RGB PIL image."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, (bytes, bytearray)):
        return decode_image(bytes(image), name=where)
    if isinstance(image, Image.Image):
        return to_rgb(image)
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
