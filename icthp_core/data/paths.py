"""Paths held in files: written so they resolve from the file's own folder, read against that folder.

Every file a job writes that names other files (labels, score tables) stores each path either absolute (as the
user gave it) or relative to the written file's folder (never relative to the directory the job ran in), so the
file reads back from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def portable(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """`path` as written into a file in `folder`: an absolute path as it is, a path relative to the current
    directory rewritten relative to `folder`."""
    text = os.fspath(path)
    if os.path.isabs(text):
        return text
    target = os.path.abspath(text)
    try:
        return Path(os.path.relpath(target, os.path.abspath(os.fspath(folder)))).as_posix()
    except ValueError:  # no relative path between them (another drive)
        return target


def resolve(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """A path read from a file in `folder`, as a path usable from the current directory."""
    p = os.fspath(path)
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(os.fspath(folder), p))
