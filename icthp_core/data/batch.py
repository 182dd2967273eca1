"""Background decoding and preprocessing of images for batch scoring (torch DataLoader workers).

An item's image is a file path or the encoded bytes of an image (as in Pick-a-Pic parquet files).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from icthp_core.data.images import DecodePolicy
from icthp_core.data.images import decode_image as _decode
from icthp_core.data.preprocess import preprocess_pil
from icthp_core.errors import ConfigError, ImageLoadError

ImageSource = str | bytes


def decode_image(ref: ImageSource, where: str = "image", policy: str | DecodePolicy = DecodePolicy.VIEW) -> Image.Image:
    """A path or encoded image bytes as a fully decoded PIL image (`icthp_core.data.images.decode_image`: limits,
    decode policy, every mode); ImageLoadError naming the path, or `where` for bytes."""
    return _decode(ref, name=where if isinstance(ref, (bytes, bytearray)) else None, policy=policy)


class FileItems(Dataset):
    """(image path or bytes, prompt) items -> (image, prompt, {mode: pixels} | None, error | None); never raises on
    bad images (an error for bytes names the item's index). `policy`: the decode policy (`DecodePolicy`)."""

    def __init__(
        self,
        items: Sequence[tuple[ImageSource, str | None]],
        modes: Sequence[str],
        policy: str | DecodePolicy = DecodePolicy.VIEW,
    ):
        self.items, self.modes, self.policy = list(items), list(modes), DecodePolicy(policy)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, prompt = self.items[i]
        try:
            img = decode_image(path, f"item {i}", self.policy)
            return path, prompt, {m: preprocess_pil(img, m, policy=self.policy) for m in self.modes}, None
        except ImageLoadError as e:
            return path, prompt, None, str(e)
        except Exception as e:  # noqa: BLE001 - one bad file is that file's error row, never the run's
            name = f"item {i}" if isinstance(path, (bytes, bytearray)) else path
            return path, prompt, None, f"{name}: cannot preprocess image ({type(e).__name__}: {e})"


def _collate(samples: list) -> dict:
    rows, pix = [], {}
    for path, prompt, pixels, error in samples:
        rows.append({"image": path, "prompt": prompt, "error": error})
        for m, t in (pixels or {}).items():
            pix.setdefault(m, []).append(t)
    return {"rows": rows, "pixels": {m: torch.stack(v) for m, v in pix.items()}}


def ordered_loader(
    dataset: Dataset, batch_size: int, num_workers: int, collate_fn, pin_memory: bool = False
) -> DataLoader:
    """Batches in input order, decoded by `num_workers` background processes (4 batches ahead each)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be >= 1")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers else None,
    )


def progress_bar(total: int, enabled: bool = True):
    """A tqdm bar counting scored images, or None when `enabled` is false."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="img", desc="scoring")


def with_progress(batches: Iterable[dict], total: int, enabled: bool = True) -> Iterator[dict]:
    """`batches` ({"rows": [...], ...}) passed through, their rows counted on a `progress_bar` when `enabled`."""
    bar = progress_bar(total, enabled)
    try:
        for batch in batches:
            yield batch
            if bar is not None:
                bar.update(len(batch["rows"]))
    finally:
        if bar is not None:
            bar.close()


def iter_file_batches(
    items: Sequence[tuple[ImageSource, str | None]],
    modes: Sequence[str],
    batch_size: int = 32,
    num_workers: int = 2,
    pin_memory: bool = False,
    progress: bool = False,
    total: int | None = None,
    policy: str | DecodePolicy = DecodePolicy.VIEW,
) -> Iterator[dict]:
    """Batches `{"rows": [...], "pixels": {mode: [b,3,224,224]}}` in item order, decoded in worker processes.

    Unreadable files come back as rows with an `error` message naming the file (and no pixels). `policy`: the decode
    policy (`icthp_core.data.images.DecodePolicy`).
    """
    data = FileItems(items, modes, policy)
    loader = ordered_loader(data, batch_size, num_workers, _collate, pin_memory=pin_memory)
    yield from with_progress(loader, total if total is not None else len(data), progress)
