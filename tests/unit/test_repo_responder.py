"""The repository responder: requests in, answers out, no sockets."""

from __future__ import annotations

import hashlib
import io
from typing import BinaryIO

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefabric.wire.v1.repo_pb2 import RepoRequest, RepoResponse
from model_store.distribution import RepoResponder

pytestmark = pytest.mark.unit

METADATA = {"timestamp.json": b'{"signed": {"_type": "timestamp"}}', "3.snapshot.json": b"{}"}
BLOB = b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(313))[:10_000]
BLOB_SHA = hashlib.sha256(BLOB).hexdigest()
TARGET_PATH = f"targets/models/mlp/3/{BLOB_SHA}.model.onnx"


class Repository:
    """In-memory metadata and blobs that record every lookup."""

    def __init__(self) -> None:
        self.lookups: list[str] = []

    def read_metadata(self, name: str) -> bytes | None:
        self.lookups.append(name)
        return METADATA.get(name)

    def open_target(self, sha256: str) -> BinaryIO | None:
        self.lookups.append(sha256)
        return io.BytesIO(BLOB) if sha256 == BLOB_SHA else None


def ask(responder: RepoResponder, path: str, offset: int = 0, max_length: int = 0) -> RepoResponse:
    request = RepoRequest(path=path, offset=offset, max_length=max_length)
    return RepoResponse.FromString(responder.answer(request.SerializeToString()))


@pytest.fixture
def repository() -> Repository:
    return Repository()


@pytest.fixture
def responder(repository: Repository) -> RepoResponder:
    return RepoResponder(repository.read_metadata, repository.open_target, chunk_size=4096)


def test_metadata_is_served_whole(responder: RepoResponder) -> None:
    response = ask(responder, "metadata/timestamp.json")
    assert response.status == RepoResponse.OK
    assert response.data == METADATA["timestamp.json"]
    assert (response.offset, response.total_length) == (0, len(METADATA["timestamp.json"]))


@pytest.mark.parametrize(("max_length", "chunk"), [(0, 4096), (1000, 1000), (9999, 4096)])
def test_chunks_from_offsets_reassemble_the_target(
    responder: RepoResponder, max_length: int, chunk: int
) -> None:
    received = bytearray()
    while len(received) < len(BLOB):
        response = ask(responder, TARGET_PATH, offset=len(received), max_length=max_length)
        assert response.status == RepoResponse.OK
        assert response.total_length == len(BLOB)
        assert response.offset == len(received)
        assert len(response.data) == min(chunk, len(BLOB) - len(received))
        received += response.data
    assert bytes(received) == BLOB


def test_transport_limit_caps_the_chunk(responder: RepoResponder) -> None:
    request = RepoRequest(path=TARGET_PATH, offset=5, max_length=0)
    response = RepoResponse.FromString(responder.answer(request.SerializeToString(), max_chunk=100))
    assert response.data == BLOB[5:105]


def test_offset_at_the_end_is_an_empty_ok(responder: RepoResponder) -> None:
    response = ask(responder, TARGET_PATH, offset=len(BLOB))
    assert (response.status, response.data, response.total_length) == (
        RepoResponse.OK,
        b"",
        len(BLOB),
    )


@pytest.mark.parametrize("path", [TARGET_PATH, "metadata/timestamp.json"])
def test_offset_past_the_end_is_a_bad_request(responder: RepoResponder, path: str) -> None:
    response = ask(responder, path, offset=1_000_000)
    assert response.status == RepoResponse.BAD_REQUEST
    assert "past the end" in response.message


@pytest.mark.parametrize(
    "path", ["metadata/4.snapshot.json", f"targets/models/mlp/3/{'0' * 64}.model.onnx"]
)
def test_missing_files_are_absent(responder: RepoResponder, path: str) -> None:
    response = ask(responder, path)
    assert response.status == RepoResponse.ABSENT
    assert path in response.message


@pytest.mark.parametrize(
    "path",
    [
        "",
        "metadata/../keys/root.key",
        "metadata/..",
        "metadata/.hidden.json",
        "/metadata/timestamp.json",
        "metadata//timestamp.json",
        "metadata/sub/timestamp.json",
        f"targets/../../etc/{BLOB_SHA}.passwd",
        f"targets/models/./{BLOB_SHA}.model.onnx",
        f"targets\\models\\{BLOB_SHA}.model.onnx",
        "targets/models/mlp/3/model.onnx",
        f"targets/models/{BLOB_SHA.upper()}.model.onnx",
        f"targets/{BLOB_SHA}.",
        "metadata/timestamp.json\x00.png",
        "keys/root.key",
        "metadata/" + "a" * 2000,
    ],
)
def test_traversal_and_malformed_paths_are_refused_without_a_lookup(
    responder: RepoResponder, repository: Repository, path: str
) -> None:
    response = ask(responder, path)
    assert response.status == RepoResponse.BAD_REQUEST
    assert response.message
    assert repository.lookups == []


def test_garbage_payload_is_a_bad_request(responder: RepoResponder) -> None:
    response = RepoResponse.FromString(responder.answer(b"\xff\xff\xff\xff"))
    assert response.status == RepoResponse.BAD_REQUEST
    assert "not a RepoRequest" in response.message


def test_read_failure_is_an_error_without_details() -> None:
    def broken(_name: str) -> bytes | None:
        raise PermissionError("/srv/store/metadata/timestamp.json: permission denied")

    responder = RepoResponder(broken, lambda _sha: None)
    response = ask(responder, "metadata/timestamp.json")
    assert response.status == RepoResponse.ERROR
    assert "/srv/store" not in response.message


@given(st.binary(max_size=200))
def test_any_payload_gets_a_parsable_answer(payload: bytes) -> None:
    repository = Repository()
    responder = RepoResponder(repository.read_metadata, repository.open_target, chunk_size=64)
    response = RepoResponse.FromString(responder.answer(payload))
    assert response.status in (
        RepoResponse.OK,
        RepoResponse.ABSENT,
        RepoResponse.BAD_REQUEST,
    )
    assert len(response.data) <= 64


def test_chunk_size_must_be_positive(repository: Repository) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        RepoResponder(repository.read_metadata, repository.open_target, chunk_size=0)
