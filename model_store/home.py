"""Where the store keeps its state: ``EDGEFABRIC_HOME`` (default ``~/.edgefabric``)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StoreHome", "fsync_dir", "write_atomic"]

HOME_ENV = "EDGEFABRIC_HOME"


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permission bits ``mode``.

    Readers see the old or the new file, never a torn one; the rename survives a power cut.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class StoreHome:
    """The folder layout of one store."""

    root: Path

    @classmethod
    def from_env(cls, override: Path | None = None) -> StoreHome:
        """``override``, else ``$EDGEFABRIC_HOME``, else ``~/.edgefabric``."""
        if override is not None:
            return cls(override)
        env = os.environ.get(HOME_ENV)
        return cls(Path(env) if env else Path.home() / ".edgefabric")

    @property
    def database(self) -> Path:
        """The SQLite registry."""
        return self.root / "registry.sqlite3"

    @property
    def blobs(self) -> Path:
        """Content-addressed model and golden-vector bytes."""
        return self.root / "blobs"

    @property
    def tuf(self) -> Path:
        """The TUF repository (metadata only; target bytes are the blobs)."""
        return self.root / "tuf"

    @property
    def keys(self) -> Path:
        """Signing keys (0600 files in a 0700 folder)."""
        return self.root / "keys"

    @property
    def audit_log(self) -> Path:
        """The hash-chained audit log (JSON lines)."""
        return self.root / "audit.log"

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store's write lock: concurrent CLI invocations take turns."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / "store.lock").open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
