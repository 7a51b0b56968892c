"""Fuzzing chunk reassembly: a repository transfer over a faulty, lying link.

The real :class:`RepoResponder` serves a file; between it and the real :class:`RepoClient` a
link drops requests, garbles answers, and rewrites offsets, lengths and totals, as a broken or
hostile store might. ``fetch_all`` must give back exactly the file or raise TransportError /
IntegrityError, in bounded time. The MQTT fetcher resuming from a partial file must give back
the file's length, or fail with ngclient's DownloadError.
"""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tuf.api.exceptions import DownloadError

from edge_agent.fetcher import TARGETS_BASE_URL, MqttFetcher
from edgefabric.errors import IntegrityError, TransportError
from edgefabric.mqtt import Message, MqttClient
from edgefabric.repo_client import RepoClient
from edgefabric.wire.v1.repo_pb2 import RepoResponse
from model_store.distribution import RepoResponder
from tests.fuzz.profile import FUZZ

pytestmark = pytest.mark.unit

FAULTS = ["ok", "drop", "garbage", "offset", "total", "short", "empty", "status", "huge_total"]


class FaultyLink:
    """Stands in for the MQTT client: answers with a responder, through scripted faults."""

    def __init__(self, content: bytes, chunk_size: int, faults: list[str]) -> None:
        self.sha256 = hashlib.sha256(content).hexdigest()
        self._content = content
        self._responder = RepoResponder(
            lambda name: content if name == "f.json" else None,
            lambda key: io.BytesIO(content) if key == self.sha256 else None,
            chunk_size=chunk_size,
        )
        self._faults = faults
        self._lock = threading.Lock()
        self.requests = 0

    def request(self, topic: str, payload: bytes, **_: object) -> Message:
        with self._lock:
            fault = self._faults[self.requests % len(self._faults)]
            self.requests += 1
            if self.requests > 10_000:
                raise AssertionError("the client keeps asking: a transfer that never ends")
        if fault == "drop":
            raise TransportError("dropped")
        answer = RepoResponse.FromString(self._responder.answer(payload))
        if fault == "garbage":
            return Message(topic, b"\xff\xff\xff", qos=1, retain=False)
        if fault == "offset":
            answer.offset += 1
        elif fault == "total":
            answer.total_length += 1
        elif fault == "huge_total":
            answer.total_length = 2**62
        elif fault == "short":
            answer.data = answer.data[:-1]
        elif fault == "empty":
            answer.data = b""
        elif fault == "status":
            answer.status = RepoResponse.ERROR
        return Message(topic, answer.SerializeToString(), qos=1, retain=False)

    def wait_connected(self, timeout_s: float) -> bool:
        return True


def client_for(link: FaultyLink, window: int) -> RepoClient:
    return RepoClient(cast(MqttClient, link), "dev-1", timeout_s=1.0, attempts=2, window=window)


transfers = st.tuples(
    st.binary(min_size=0, max_size=600),
    st.integers(1, 64),
    st.lists(st.sampled_from(FAULTS), min_size=1, max_size=12).map(lambda f: ["ok", *f]),
    st.sampled_from([1, 4]),
)


@FUZZ
@given(transfers)
def test_reassembly_gives_the_file_or_a_clear_error(
    transfer: tuple[bytes, int, list[str], int],
) -> None:
    content, chunk_size, faults, window = transfer
    link = FaultyLink(content, chunk_size, faults)
    try:
        got = client_for(link, window).fetch_all("metadata/f.json", max_length=4096)
    except (TransportError, IntegrityError):
        return
    assert got == content


@FUZZ
@given(transfers)
def test_only_faultless_links_deliver_every_byte(
    transfer: tuple[bytes, int, list[str], int],
) -> None:
    content, chunk_size, _, window = transfer
    link = FaultyLink(content, chunk_size, ["ok", "drop"])  # drops are retried
    assert client_for(link, window).fetch_all("metadata/f.json") == content


def test_a_claimed_total_past_max_length_is_refused_before_any_transfer() -> None:
    link = FaultyLink(b"x" * 100, 10, ["huge_total"])
    with pytest.raises(IntegrityError, match="is 4611686018427387904 bytes long"):
        client_for(link, 4).fetch_all("metadata/f.json", max_length=4096)
    assert link.requests == 1


@FUZZ
@given(
    st.binary(min_size=1, max_size=400),
    st.integers(1, 64),
    st.one_of(st.integers(0, 400), st.just(-1)),
    st.booleans(),
)
def test_the_fetcher_resumes_from_what_it_kept(
    tmp_path_factory: pytest.TempPathFactory,
    content: bytes,
    chunk_size: int,
    kept: int,
    garbled: bool,
) -> None:
    link = FaultyLink(content, chunk_size, ["ok"])
    fetcher = MqttFetcher(client_for(link, 4), tmp_path_factory.mktemp("partial"))
    url = f"{TARGETS_BASE_URL}m/{link.sha256}.m.onnx"
    partial = fetcher.partial_path(url)
    assert isinstance(partial, Path)
    kept = min(kept, len(content) - 1) if kept >= 0 else 0
    prefix = content[:kept]
    partial.write_bytes(bytes(b ^ 1 for b in prefix) if garbled else prefix)
    try:
        got = b"".join(fetcher.fetch(url))
    except DownloadError:
        return
    assert len(got) == len(content)
    if not garbled:
        assert got == content
