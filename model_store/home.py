"""Where the store keeps its state: ``EDGEFABRIC_HOME`` (default ``~/.edgefabric``)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StoreHome"]

HOME_ENV = "EDGEFABRIC_HOME"


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
    def pki(self) -> Path:
        """The fleet's certificate authority for MQTT (``model_store.pki``)."""
        return self.root / "pki"

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
