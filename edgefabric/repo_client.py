"""Fetching TUF repository files over MQTT: the client side of ``model_store.distribution``.

Used by the edge agent's TUF fetcher; it depends on the wire messages and the MQTT client only.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from google.protobuf.message import DecodeError

from edgefabric import topics
from edgefabric.errors import IntegrityError, TransportError
from edgefabric.mqtt import MqttClient
from edgefabric.wire.v1.repo_pb2 import RepoRequest, RepoResponse

__all__ = ["RepoClient", "RepoResponse"]

logger = logging.getLogger(__name__)


class RepoClient:
    """Requests repository files chunk by chunk; resumes a transfer after a dropped
    connection."""

    def __init__(
        self,
        mqtt: MqttClient,
        client_id: str,
        timeout_s: float = 10.0,
        *,
        attempts: int = 3,
        window: int = 8,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self._window = window
        self._mqtt = mqtt
        self._request_topic = topics.repo_request(client_id)
        self._response_topic = topics.repo_response(client_id)
        self._timeout_s = timeout_s
        self._attempts = attempts

    def fetch(self, path: str, offset: int = 0, max_length: int = 0) -> RepoResponse:
        """One request: up to ``max_length`` bytes (0: the server's chunk size) of ``path``
        from ``offset``. The answer's ``status`` says OK, ABSENT, BAD_REQUEST or ERROR."""
        request = RepoRequest(path=path, offset=offset, max_length=max_length)
        reply = self._mqtt.request(
            self._request_topic,
            request.SerializeToString(),
            response_topic=self._response_topic,
            timeout_s=self._timeout_s,
        )
        try:
            return RepoResponse.FromString(reply.payload)
        except DecodeError as error:
            raise TransportError(
                f"the repository server's answer for {path!r} is not a RepoResponse: {error}"
            ) from error

    def open_stream(self, path: str, offset: int = 0) -> tuple[int, Iterator[bytes]] | None:
        """``(total length, chunks from offset to the end)``, or None if there is no such file.

        The first chunk is fetched here; the rest as the iterator is consumed, each resuming
        after a dropped connection. Raises TransportError if the server fails, the file
        changes size mid-transfer, or the connection stays down for ``attempts`` tries.
        """
        first = self._fetch_resuming(path, offset)
        if first.status == RepoResponse.ABSENT:
            return None
        _check_answer(path, offset, first)
        return first.total_length, self._chunks(path, offset, first)

    def _chunks(self, path: str, offset: int, first: RepoResponse) -> Iterator[bytes]:
        """The first answer's data, then the rest with up to ``window`` requests in flight."""
        total, step = first.total_length, len(first.data)
        if step == 0 and offset < total:
            raise TransportError(f"the repository server sent no data for {path!r}")
        if first.data:
            yield first.data
        offset += step
        pool = ThreadPoolExecutor(self._window, thread_name_prefix="repo-fetch")
        in_flight: deque[tuple[int, Future[RepoResponse]]] = deque()
        ahead = offset
        try:
            while offset < total:
                while len(in_flight) < self._window and ahead < total:
                    in_flight.append((ahead, pool.submit(self._fetch_resuming, path, ahead)))
                    ahead += step
                wanted, future = in_flight.popleft()
                response = future.result()
                _check_answer(path, wanted, response)
                if response.total_length != total:
                    raise TransportError(
                        f"{path!r} changed from {total} to {response.total_length} bytes during "
                        "the transfer; fetch it again"
                    )
                if len(response.data) != min(step, total - wanted):
                    # The server chose another chunk size: drop what was asked ahead, go on
                    # one request at a time from what arrived.
                    for _, pending in in_flight:
                        pending.cancel()
                    in_flight.clear()
                    step = len(response.data)
                    if step == 0:
                        raise TransportError(f"the repository server sent no data for {path!r}")
                    ahead = wanted + step
                yield response.data
                offset = wanted + len(response.data)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def fetch_all(self, path: str, *, max_length: int | None = None) -> bytes | None:
        """The whole of ``path``, or None if the repository has no such file.

        Raises IntegrityError if the file is longer than ``max_length``, TransportError as
        :meth:`open_stream` does.
        """
        opened = self.open_stream(path)
        if opened is None:
            return None
        total, chunks = opened
        if max_length is not None and total > max_length:
            raise IntegrityError(
                f"{path!r} is {total} bytes long, more than the {max_length} expected"
            )
        return b"".join(chunks)

    def _fetch_resuming(self, path: str, offset: int) -> RepoResponse:
        for attempt in range(1, self._attempts + 1):
            try:
                return self.fetch(path, offset)
            except TransportError as error:
                if attempt == self._attempts:
                    raise
                logger.info("fetching %s at %d failed (%s); retrying", path, offset, error)
                self._mqtt.wait_connected(self._timeout_s)
        raise AssertionError("unreachable")  # pragma: no cover


def _check_answer(path: str, offset: int, response: RepoResponse) -> None:
    if response.status != RepoResponse.OK:
        name = RepoResponse.Status.Name(response.status)
        raise TransportError(
            f"the repository server answered {name} for {path!r} at offset {offset}: "
            f"{response.message or 'no reason given'}"
        )
    if response.offset != offset or offset + len(response.data) > response.total_length:
        raise TransportError(
            f"the repository server sent bytes {response.offset}+{len(response.data)} of "
            f"{response.total_length} for {path!r} when asked for offset {offset}"
        )
