"""Durable file operations shared by the store and the agent: atomic writes, moves, hashes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["fsync_dir", "move_file", "sha256_file", "write_atomic"]

_CHUNK_BYTES = 1 << 20


def fsync_dir(directory: Path) -> None:
    """Flush ``directory``'s entries, so a rename or a new file in it survives a power cut."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` by ``data`` with permission bits ``mode``: readers see the old or the
    new bytes, never a mix, and the rename survives a power cut."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def move_file(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; copy, flush and delete when they are on two filesystems."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.copyfile(source, target)
        source.unlink()
    with target.open("rb") as handle:  # the bytes, not just the name, must survive a power cut
        os.fsync(handle.fileno())


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
