"""Exceptions raised by icthp_core; each message names the file, key or argument at fault."""


class ICTHPError(Exception):
    """Base class of the toolkit's errors."""


class CheckpointError(ICTHPError, ValueError):
    """A checkpoint file is unreadable, truncated, or has missing/unexpected keys or wrong shapes."""


class WeightsNotFoundError(ICTHPError, FileNotFoundError):
    """Weights are neither at the given path nor in the Hugging Face cache (and cannot be downloaded)."""


class ImageLoadError(ICTHPError, ValueError):
    """An image could not be decoded."""
