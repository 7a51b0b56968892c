"""Content-addressed blobs: bytes stored under their sha256, written atomically."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import BinaryIO

from edgefabric.errors import IntegrityError
from edgefabric.files import write_atomic

__all__ = ["BlobStore", "sha256_hex"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_READ_CHUNK = 1 << 20


def sha256_hex(data: bytes) -> str:
    """Lower-case hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    """``<root>/sha256/<first two hex>/<hex>``; a blob never changes once written."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def path(self, digest: str) -> Path:
        """Where the blob with ``digest`` lives (whether or not it exists)."""
        if not _HEX64.fullmatch(digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self._root / "sha256" / digest[:2] / digest

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store ``data``; returns its digest and whether it was new."""
        digest = sha256_hex(data)
        path = self.path(digest)
        if path.exists():
            return digest, False
        write_atomic(path, data, mode=0o444)
        return digest, True

    def remove(self, digest: str) -> None:
        """Drop a blob (only for undoing a put that the registry did not keep)."""
        self.path(digest).unlink(missing_ok=True)

    def open(self, digest: str) -> BinaryIO | None:
        """The blob for reading, or ``None`` when absent (or ``digest`` is not a digest)."""
        try:
            return self.path(digest).open("rb")
        except (ValueError, FileNotFoundError):
            return None

    def read(self, digest: str) -> bytes:
        """The blob's bytes, checked against its digest."""
        try:
            data = self.path(digest).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"blob {digest[:12]} is missing from {self._root}") from None
        if sha256_hex(data) != digest:
            raise IntegrityError(f"blob {digest[:12]} is damaged: its bytes no longer match")
        return data

    def check(self, digest: str) -> str | None:
        """A problem with the blob (missing, damaged), or ``None`` when it is intact."""
        path = self.path(digest)
        if not path.is_file():
            return f"blob {digest[:12]} is missing"
        hasher = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_READ_CHUNK):
                hasher.update(chunk)
        if hasher.hexdigest() != digest:
            return f"blob {digest[:12]} is damaged: sha256 is now {hasher.hexdigest()[:12]}"
        return None
