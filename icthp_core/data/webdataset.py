"""WebDataset shards (`.tar`, `.tar.gz`, `.tgz`) read member by member, as the `webdataset` library reads them.

- Keys: webdataset's rule (`base_plus_ext`): key = the member's directory + its basename up to the basename's
  *first* dot, extension = the rest (`./a/b.c.jpg` -> key `./a/b`, extension `c.jpg`). A folder with a dot in its
  name is fine. Members whose basename starts with a dot are skipped.
- Samples are runs of consecutive members with the same key (webdataset's `group_by_keys`); a key seen again later
  becomes an error row (it would otherwise give two rows with one id).
- Streaming: the tar is read in stream mode (`r|*`, gzip decompressed on the fly); only the members a record needs
  (images, text, json) are read, one at a time, and a member over the encoded-size limit of
  `icthp_core.data.images.ImageLimits` is refused without being read. Memory is one sample's members, never the tar.
- A truncated or corrupt tar: the samples before the damage are records as usual, the sample being read becomes an
  error row, and one more error row `<tar>#<rest>` says the rest of the shard is lost; the next shard is read as usual.
"""

from __future__ import annotations

import json
import re
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from icthp_core.data.images import ImageLimits
from icthp_core.data.prompts import PROMPT_COLUMNS

#: image extensions of a sample, in order of preference
WDS_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
#: text extensions that hold the prompt, in order of preference
WDS_TEXT_EXTS = ("txt", "caption", "prompt")
#: the largest text or json member read (bytes); larger ones make the sample an error row
MAX_TEXT_BYTES = 1 << 20
#: file-name endings taken as WebDataset shards
WDS_SUFFIXES = (".tar", ".tar.gz", ".tgz")

_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def split_key(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name by webdataset's rule, or None when the basename has no usable dot.

    >>> split_key("./a.b/c.d.jpg")
    ('./a.b/c', 'd.jpg')
    """
    m = _KEY_RE.match(name)
    return None if m is None else (m.group(1), m.group(2))


def is_wds_name(name: str) -> bool:
    """Whether a file name ends like a WebDataset shard (WDS_SUFFIXES)."""
    return name.lower().endswith(WDS_SUFFIXES)


@dataclass
class _Sample:
    key: str | None  # None: the error that ended the read of the tar
    parts: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None


def _wanted(ext: str) -> bool:
    return ext in WDS_IMAGE_EXTS or ext in WDS_TEXT_EXTS or ext == "json"


def _read_member(tf: tarfile.TarFile, m: tarfile.TarInfo, ext: str, where: str, limits: ImageLimits) -> bytes:
    """The member's bytes; ImageLoadError (from the limits) or ValueError when it is over its size limit."""
    if ext in WDS_IMAGE_EXTS:
        limits.check_bytes(m.size, where)
    elif m.size > MAX_TEXT_BYTES:
        raise ValueError(f"{where}: {m.size:,} bytes is over the limit of {MAX_TEXT_BYTES:,} bytes for a text member")
    fh = tf.extractfile(m)
    return fh.read() if fh is not None else b""


def _samples(path: str, limits: ImageLimits) -> Iterator[_Sample]:
    """Consecutive-key samples of a tar; a final sample with key None carries the error that ended the read."""
    current: _Sample | None = None
    seen: set[str] = set()
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for m in tf:
                parts = split_key(m.name) if m.isfile() else None
                if parts is None:
                    continue
                key, ext = parts[0], parts[1].lower()
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                    current = _Sample(key)
                    if key in seen:
                        current.error = (
                            f"{path}#{key}: key seen before in this tar (a sample's members must be consecutive)"
                        )
                    seen.add(key)
                if not _wanted(ext) or current.error:
                    continue
                if ext in current.parts:
                    current.error = f"{path}#{key}: two members with extension .{ext}"
                    continue
                try:
                    current.parts[ext] = _read_member(tf, m, ext, f"{path}#{key}.{ext}", limits)
                except ValueError as e:  # over a size limit (ImageLoadError is a ValueError): this sample's error
                    current.error = str(e)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        if current is not None:
            current.error = current.error or f"{path}#{current.key}: the tar ends inside this sample ({e})"
            yield current
        lost = f"{path}: unreadable after {len(seen)} samples ({type(e).__name__}: {e}); the rest of this shard is lost"
        yield _Sample(None, error=lost)
        return
    if current is not None:
        yield current


def _prompt(parts: dict[str, bytes]) -> tuple[str | None, dict]:
    meta: object = {}
    if "json" in parts:
        try:
            meta = json.loads(parts["json"])
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            meta = {}
    meta = meta if isinstance(meta, dict) else {}
    txt = next((parts[e] for e in WDS_TEXT_EXTS if e in parts), None)
    if txt is not None:
        return txt.decode("utf-8", "replace").strip(), meta
    return next((meta[k] for k in PROMPT_COLUMNS if isinstance(meta.get(k), str)), None), meta


def tar_records(
    path: str, prompt: str | None = None, keep: Sequence[str] = (), limits: ImageLimits | None = None
) -> Iterator[dict]:
    """Records `{"image": "<tar>#<key>", "prompt", "path": None, "data": image bytes, **kept json keys}` of one
    shard, streamed (module docstring); a bad sample is a record with an `error` instead of `data`."""
    limits = limits or ImageLimits.resolve()
    for sample in _samples(path, limits):
        if sample.key is None:
            yield {"image": f"{path}#<rest>", "prompt": prompt, "path": None, "data": None, "error": sample.error}
            continue
        text, meta = _prompt(sample.parts)
        img_ext = next((e for e in WDS_IMAGE_EXTS if e in sample.parts), None)
        rec = {"image": f"{path}#{sample.key}", "prompt": prompt if prompt is not None else text, "path": None}
        rec["data"] = sample.parts.get(img_ext) if img_ext and not sample.error else None
        if sample.error or img_ext is None:
            rec["error"] = sample.error or f"{path}#{sample.key}: no image member (.{'/.'.join(WDS_IMAGE_EXTS)})"
        rec.update({k: meta.get(k) for k in keep})
        yield rec
