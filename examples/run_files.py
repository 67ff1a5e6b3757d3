"""Atomic file writes for checkpoints, metrics and plots (no framework imports).

An interrupt or a crash while a checkpoint is being written must never leave a truncated file where
the last good checkpoint was. :func:`atomic_write` therefore writes to a temporary file in the same
folder, flushes it to disk and renames it over the target: a rename within one file system is atomic,
so the target holds either the old complete file or the new complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "read_json", "write_json"]


def _fsync_path(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk; some systems cannot open a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` to write a temporary file, then atomically rename it to ``path``.

    The temporary name keeps ``path``'s suffix (``.tmp-<pid>-checkpoint.keras``), because some
    writers (Keras, Matplotlib) pick the format from it. If ``write`` raises — or the process is
    interrupted — the temporary file is removed and ``path`` is untouched.

    Args:
        path: The target file.
        write: Writes the complete content to the path it is given.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        FileNotFoundError: ``write`` returned without creating the temporary file.
    """
    target = Path(path)
    tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
    try:
        write(tmp)
        if not tmp.exists():
            raise FileNotFoundError(f"the writer for {target} did not create {tmp}")
        _fsync_path(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(target.parent)
    return target


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically.

    Args:
        path: The target file.
        obj: Anything ``json.dumps`` accepts; floats are written with ``repr`` precision, so they
            read back bit for bit.

    Returns:
        ``path`` as a ``Path``.
    """
    text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`write_json`.

    Args:
        path: The file.

    Returns:
        The decoded object.
    """
    return json.loads(Path(path).read_text(encoding="utf-8"))
