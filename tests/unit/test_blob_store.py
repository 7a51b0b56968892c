"""Content-addressed blobs: written once, checked on read."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from edgefabric.errors import IntegrityError
from model_store.blobs import BlobStore

pytestmark = pytest.mark.unit


def test_put_stores_under_the_sha256_and_reads_back(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest, new = blobs.put(b"model bytes")
    assert digest == hashlib.sha256(b"model bytes").hexdigest()
    assert new
    assert blobs.read(digest) == b"model bytes"
    assert blobs.check(digest) is None


def test_putting_the_same_bytes_twice_is_not_new(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    blobs.put(b"x")
    assert blobs.put(b"x")[1] is False


def test_a_damaged_blob_is_refused(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest, _ = blobs.put(b"original")
    path = blobs.path(digest)
    os.chmod(path, 0o644)
    path.write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match=f"blob {digest[:12]} is damaged"):
        blobs.read(digest)
    assert "is damaged" in (blobs.check(digest) or "")


def test_a_missing_blob_is_reported(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest = hashlib.sha256(b"never stored").hexdigest()
    assert blobs.open(digest) is None
    assert blobs.check(digest) == f"blob {digest[:12]} is missing"
    with pytest.raises(IntegrityError, match="is missing"):
        blobs.read(digest)


def test_open_refuses_anything_but_a_digest(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    assert blobs.open("../../etc/passwd") is None
