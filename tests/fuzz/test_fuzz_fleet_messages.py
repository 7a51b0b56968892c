"""Fuzzing what arrives over MQTT: signed desired state, device reports, repository requests.

Each parser gets random bytes and mutated valid messages, and must answer with its documented
error (InvalidInputError for desired state, ValueError for device reports, a BAD_REQUEST answer
for repository requests); nothing else may escape, and a tampered desired state is never
accepted as something other than what the controller signed.
"""

from __future__ import annotations

import io

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from edgefabric.desired import open_desired, seal_desired
from edgefabric.errors import InvalidInputError
from edgefabric.wire.v1.fleet_pb2 import DesiredState, DeviceStatus, Event, Health
from edgefabric.wire.v1.repo_pb2 import RepoRequest, RepoResponse
from model_store.distribution import RepoResponder
from model_store.fleet_records import DeviceRecord, decode
from tests.fuzz.profile import FUZZ

pytestmark = pytest.mark.unit

KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()
STATE = DesiredState(device_id="dev-1", sequence=7)
SEALED = seal_desired(STATE, KEY)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few bytes flipped, cut, or inserted."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


payloads = st.one_of(st.binary(max_size=256), mutated(SEALED))


@FUZZ
@given(payloads, st.booleans())
def test_desired_state_is_verified_or_refused(payload: bytes, keyed: bool) -> None:
    try:
        state = open_desired(
            payload,
            device_id="dev-1",
            public_key=KEY.public_key() if keyed else None,
            applied_sequence=0,
        )
    except InvalidInputError:
        return
    if keyed:  # the signature covers the state bytes: only the signed state gets through
        assert state == STATE


@FUZZ
@given(payloads)
def test_desired_state_signed_by_another_key_is_refused(payload: bytes) -> None:
    with pytest.raises(InvalidInputError):
        open_desired(
            payload,
            device_id="dev-1",
            public_key=OTHER_KEY.public_key(),
            applied_sequence=0,
        )


REPORTS = [
    DeviceStatus(device_id="dev-1", online=True).SerializeToString(),
    Health(device_id="dev-1").SerializeToString(),
    Event(device_id="dev-1").SerializeToString(),
]
TOPICS = [
    "ef/v1/dev/dev-1/status",
    "ef/v1/dev/dev-1/health",
    "ef/v1/dev/dev-1/events",
    "ef/v1/dev/dev-1/other",
    "ef/v1/dev//health",
    "ef/v1/x",
]


@FUZZ
@given(
    st.sampled_from(TOPICS),
    st.one_of(st.binary(max_size=256), st.sampled_from(REPORTS).flatmap(mutated)),
    st.booleans(),
)
def test_device_reports_decode_and_fold_or_are_refused(
    topic: str, payload: bytes, retained: bool
) -> None:
    try:
        device_id, report = decode(topic, payload)
    except ValueError:
        return
    record = DeviceRecord(device_id)
    record.apply(report, received_s=1000.0, retained=retained)
    assert record.row().device_id == device_id
    record.to_json()


TARGET_HASH = "ab" * 32
TARGET = bytes(range(200))
FILES = {"metadata/timestamp.json": b'{"signed": {}}', f"targets/m/{TARGET_HASH}.m.onnx": TARGET}


def _responder(chunk_size: int) -> RepoResponder:
    def read_metadata(name: str) -> bytes | None:
        return FILES.get(f"metadata/{name}")

    def open_target(sha256: str) -> io.BytesIO | None:
        return io.BytesIO(TARGET) if sha256 == TARGET_HASH else None

    return RepoResponder(read_metadata, open_target, chunk_size=chunk_size)


repo_requests = st.builds(
    RepoRequest,
    path=st.one_of(
        st.sampled_from([*FILES, "metadata/../../etc/passwd", "targets/", "", "/abs"]),
        st.text(max_size=40),
    ),
    offset=st.one_of(st.integers(0, 220), st.integers(0, 2**64 - 1)),
    max_length=st.integers(0, 2**32 - 1),
)


@FUZZ
@given(
    st.one_of(st.binary(max_size=128), repo_requests.map(RepoRequest.SerializeToString)),
    st.integers(1, 64),
    st.one_of(st.none(), st.integers(1, 64)),
)
def test_repository_requests_are_answered_never_raised(
    payload: bytes, chunk_size: int, max_chunk: int | None
) -> None:
    answer = RepoResponse.FromString(_responder(chunk_size).answer(payload, max_chunk=max_chunk))
    if answer.status == RepoResponse.OK:
        assert len(answer.data) <= min(chunk_size, max_chunk or chunk_size)
        assert answer.offset + len(answer.data) <= answer.total_length
    else:
        assert answer.message
