"""Scores that travel with the image: a JSON record in a PNG text chunk, and an optional score banner.

The record (text chunk ``icthp_scores``)::

    {"format": 1, "prompt": "...", "model": "ICT-HP",
     "scores": {"ict_hp": 0.71, "ict": 0.93, "hp": 0.76},
     "metrics": {"ict_hp": {"label": "ICT-HP", "range": "(-1, 1)"}, ...},
     "sources": {"ict": "8y/ICT", "hp": "8y/HP"}, "normalize": null}

Scores are absolute values of the published models (not batch-relative) unless ``normalize`` says otherwise
(a weighted mix z-normalised within its batch).
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, PngImagePlugin, UnidentifiedImageError

from icthp_core.errors import DataError

KEY = "icthp_scores"
FORMAT = 1


def png_info(record: dict[str, Any], extra: dict[str, str] | None = None) -> PngImagePlugin.PngInfo:
    """A PngInfo carrying ``record`` (plus ``extra`` text chunks such as ComfyUI's workflow)."""
    info = PngImagePlugin.PngInfo()
    for k, v in (extra or {}).items():
        info.add_text(k, v)
    info.add_text(KEY, json.dumps(record, sort_keys=True))
    return info


#: the largest text chunk read (bytes, after decompression); a larger record is that file's error
MAX_RECORD_BYTES = 16 << 20
#: the deepest nesting of lists/objects accepted in a record (ours is 3 deep)
MAX_RECORD_DEPTH = 16
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def _inflate(data: bytes, where: str) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, MAX_RECORD_BYTES + 1)
    if len(out) > MAX_RECORD_BYTES:
        raise DataError(f"{where}: the {KEY} metadata is over {MAX_RECORD_BYTES:,} bytes")
    return out


def _chunk_text(kind: bytes, data: bytes, where: str) -> tuple[bytes, str]:
    """(keyword, text) of a tEXt / zTXt / iTXt chunk (the PNG specification's layouts)."""
    keyword, _, rest = data.partition(b"\0")
    if kind == b"tEXt":
        return keyword, rest.decode("latin-1")
    if kind == b"zTXt":
        return keyword, _inflate(rest[1:], where).decode("latin-1")
    compressed, rest = rest[:1] == b"\1", rest[2:]  # iTXt: flag, method, language\0, translated keyword\0, text
    _lang, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    return keyword, (_inflate(text, where) if compressed else text).decode("utf-8", "replace")


def _png_text(fh, where: str) -> str | None:
    """The text of the KEY chunk of a PNG, walking chunk headers only (image data is skipped, never decoded)."""
    key = KEY.encode("latin-1")
    while True:
        head = fh.read(8)
        if len(head) < 8:
            return None  # a truncated file: no record found before its end
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            return None
        if kind not in _TEXT_CHUNKS or length > MAX_RECORD_BYTES:
            fh.seek(length + 4, os.SEEK_CUR)
            continue
        data = fh.read(length)
        fh.seek(4, os.SEEK_CUR)  # CRC
        if data.partition(b"\0")[0] == key:
            return _chunk_text(kind, data, where)[1]


def _depth(value: Any) -> int:
    """Nesting depth of lists/objects (iterative: no recursion limit to hit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_RECORD_DEPTH:
                stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def parse_record(text: str, where: str) -> dict[str, Any]:
    """A record from its JSON text, checked: an object, not nested deeper than MAX_RECORD_DEPTH, with a
    `scores` object of finite numbers. DataError naming `where` otherwise (no code is ever evaluated)."""
    try:
        record = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise DataError(f"{where}: the {KEY} metadata is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity
        raise DataError(f"{where}: the {KEY} metadata is not valid JSON ({getattr(e, 'msg', e)})") from None
    if _depth(record) > MAX_RECORD_DEPTH:
        raise DataError(f"{where}: the {KEY} metadata is nested deeper than {MAX_RECORD_DEPTH} levels")
    if not isinstance(record, dict) or not isinstance(record.get("scores"), dict):
        raise DataError(f"{where}: the {KEY} metadata has no 'scores' object")
    for metric, value in record["scores"].items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(f"{where}: the {KEY} score {metric!r} is not a finite number ({str(value)[:40]!r})")
    return record


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record of an image written by ``png_info`` (None when the image has none), read without decoding pixels.

    PNG text chunks are found by walking the chunk headers (before or after the image data); other formats by
    their header (`Image.open` without `load`). Raises DataError (a ValueError) naming the file when the file is not
    an image or the record is not valid (see `parse_record`), OSError when the file cannot be read.
    """
    where = os.fspath(path)
    with open(path, "rb") as fh:
        if fh.read(8) == _PNG_SIGNATURE:
            text = _png_text(fh, where)
        else:
            fh.seek(0)
            try:
                with Image.open(fh) as im:
                    text = im.info.get(KEY)
            except UnidentifiedImageError:
                raise DataError(f"{where}: not an image (unrecognised format)") from None
            except Exception as e:  # noqa: BLE001 - a malformed header is this file's error (e.g. TypeError in TIFF)
                raise DataError(f"{where}: cannot read the image header ({type(e).__name__}: {e})") from None
    if text is None:
        return None
    return parse_record(text, where) if isinstance(text, str) else None


def draw_banner(image: Image.Image, text: str) -> Image.Image:
    """A copy of ``image`` with a small dark banner holding ``text`` along its bottom edge."""
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    left, top, right, bottom = draw.textbbox((0, 0), text)
    h = min(out.height, bottom - top + 6)
    draw.rectangle((0, out.height - h, out.width, out.height), fill=(0, 0, 0))
    draw.text((3, out.height - h + 2 - top), text, fill=(255, 255, 255))
    return out


def save_png(image: Image.Image, path: str | Path, record: dict[str, Any], extra: dict[str, str] | None = None):
    image.save(path, pnginfo=png_info(record, extra), compress_level=4)
