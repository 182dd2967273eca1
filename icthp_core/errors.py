"""Exceptions raised by icthp_core; each message names the file, line, key or argument at fault.

Every user-facing error derives from `ICTHPError`; the `icthp` command prints it as one line and exits non-zero.
The classes also derive from the built-in exception a caller would expect (ValueError, FileNotFoundError, ...), so
code written against those keeps working.
"""


class ICTHPError(Exception):
    """Base class of the toolkit's errors."""


class ConfigError(ICTHPError, ValueError):
    """A configuration file or command-line option is malformed (message names the file/key/option)."""


class DataError(ICTHPError, ValueError):
    """A data or prompts file, or one of its rows, is malformed (message names the file and line)."""


class DataFormatError(DataError):
    """A table lacks required columns or has an unknown format."""


class UnsafeDataError(ICTHPError, RuntimeError):
    """A pickle was given without explicit trust (pickle runs code when loaded)."""


class ImageLoadError(DataError):
    """An image could not be decoded, or is over the pixel limit (message names the file)."""


class OutputError(ICTHPError, OSError):
    """An output file cannot be written (unwritable folder, full disk, incompatible file to resume)."""


class CheckpointError(ICTHPError, ValueError):
    """A checkpoint file is unreadable, truncated, or has missing/unexpected keys, wrong shapes or non-finite values."""


class WeightsNotFoundError(ICTHPError, FileNotFoundError):
    """Weights are neither at the given path nor in the Hugging Face cache (and cannot be downloaded)."""


class LoraFormatError(CheckpointError):
    """A LoRA file that is not a valid diffusers-format LoRA (message names the file and key)."""


class DeviceError(ICTHPError, RuntimeError):
    """The requested device is not available (e.g. `--device cuda` without a GPU)."""


#: the error type that names an unreadable image
ImageError = ImageLoadError


class MissingFileError(ICTHPError, FileNotFoundError):
    """A file the user named (data, prompts, LoRA, checkpoint to resume) does not exist (message names it)."""
