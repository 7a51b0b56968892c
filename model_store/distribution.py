"""Serving the TUF repository's files over MQTT: a sans-I/O responder and its MQTT transport.

A client publishes a ``RepoRequest`` to ``ef/v1/repo/req/{client_id}`` with the MQTT 5 response
topic ``ef/v1/repo/resp/{client_id}`` and correlation data; the server answers each request with
one ``RepoResponse`` (at most one chunk) on that topic, with the same correlation data. Clients
fetch large files chunk by chunk, naming the offset, so a transfer resumes where it broke off.

Paths are the repository's URL paths under consistent snapshots:

    metadata/timestamp.json, metadata/3.snapshot.json, metadata/2.root.json
    targets/models/mlp/3/<sha256 hex>.model.onnx   (served from the blob with that hash)
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import BinaryIO

from google.protobuf.message import DecodeError

from edgefabric import topics
from edgefabric.errors import TransportError
from edgefabric.mqtt import Message, MqttClient
from edgefabric.wire.v1.repo_pb2 import RepoRequest, RepoResponse

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DistributionServer",
    "MetadataReader",
    "RepoResponder",
    "TargetOpener",
]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 1024 * 1024
"""Bytes per answer unless the client asks for fewer or the broker accepts less."""

MAX_PATH_LENGTH = 1024

MetadataReader = Callable[[str], bytes | None]
"""``read_metadata("3.snapshot.json")``: the file's bytes, or None if there is no such file."""

TargetOpener = Callable[[str], BinaryIO | None]
"""``open_target(sha256_hex)``: the blob with that hash opened for reading, or None."""

_PATH_FORMS = "metadata/<file> or targets/<dir>/<sha256>.<file>"
_METADATA_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._%+-]*")
_HASHED_TARGET_NAME = re.compile(r"([0-9a-f]{64})\.(.+)", re.DOTALL)

# Bytes a PUBLISH carrying one RepoResponse needs besides its data and response topic: fixed
# header, packet id, properties (correlation data is added per answer) and protobuf framing.
_PACKET_HEADROOM = 512


class _BadRequestError(Exception):
    """The request cannot be answered as asked; the message goes back to the client."""


def _parse_path(path: str) -> tuple[str, str]:
    """``("metadata", filename)`` or ``("target", sha256_hex)`` for a request path."""
    if not path:
        raise _BadRequestError(f"empty path; expected {_PATH_FORMS}")
    if len(path) > MAX_PATH_LENGTH:
        raise _BadRequestError(f"path is {len(path)} characters long; at most {MAX_PATH_LENGTH}")
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise _BadRequestError(f"path {path!r} must be relative, without backslashes or NUL")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise _BadRequestError(f"path {path!r} has an empty, '.' or '..' component")
    root, rest = parts[0], parts[1:]
    if root == "metadata" and len(rest) == 1:
        if not _METADATA_NAME.fullmatch(rest[0]):
            raise _BadRequestError(
                f"metadata file name {rest[0]!r} has characters outside [A-Za-z0-9._%+-]"
            )
        return "metadata", rest[0]
    if root == "targets" and rest:
        hashed = _HASHED_TARGET_NAME.fullmatch(rest[-1])
        if hashed is None:
            raise _BadRequestError(
                f"target {path!r}: the file name must start with the target's sha256 in "
                "lowercase hex and a dot (consistent snapshots)"
            )
        return "target", hashed.group(1)
    raise _BadRequestError(f"path {path!r}: expected {_PATH_FORMS}")


class RepoResponder:
    """Answers serialized ``RepoRequest`` bytes with serialized ``RepoResponse`` bytes.

    Sans-I/O: the repository is reached only through the two callables. Never raises on what a
    client sends: malformed requests get BAD_REQUEST, missing files ABSENT, read failures ERROR.
    """

    def __init__(
        self,
        read_metadata: MetadataReader,
        open_target: TargetOpener,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        *,
        on_answer: Callable[[str, str, int], None] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1 byte, got {chunk_size}")
        self._read_metadata = read_metadata
        self._open_target = open_target
        self.chunk_size = chunk_size
        self._on_answer = on_answer  # (path, status name, data bytes) of every answer: metrics

    def answer(self, request_payload: bytes, *, max_chunk: int | None = None) -> bytes:
        """The serialized answer to one serialized request; ``max_chunk`` caps the data further
        (the transport's packet limit)."""
        try:
            request = RepoRequest.FromString(request_payload)
        except DecodeError as error:
            response = RepoResponse(
                status=RepoResponse.BAD_REQUEST,
                message=f"the payload is not a RepoRequest message: {error}",
            )
        else:
            response = self.respond(request, max_chunk=max_chunk)
            if self._on_answer is not None:
                status = RepoResponse.Status.Name(response.status)
                self._on_answer(request.path, status, len(response.data))
        return response.SerializeToString()

    def respond(self, request: RepoRequest, *, max_chunk: int | None = None) -> RepoResponse:
        """The answer to one parsed request."""
        limit = min(request.max_length or self.chunk_size, self.chunk_size)
        if max_chunk is not None:
            limit = max(1, min(limit, max_chunk))
        try:
            kind, key = _parse_path(request.path)
            return self._read(request.path, kind, key, request.offset, limit)
        except _BadRequestError as error:
            return RepoResponse(
                status=RepoResponse.BAD_REQUEST, offset=request.offset, message=str(error)
            )
        except OSError as error:
            logger.warning("cannot read %s for a client: %s", request.path, error)
            return RepoResponse(
                status=RepoResponse.ERROR,
                offset=request.offset,
                message=f"the server cannot read {request.path!r} right now; retry later",
            )
        except Exception:
            logger.exception("unexpected failure answering a request for %s", request.path)
            return RepoResponse(
                status=RepoResponse.ERROR, offset=request.offset, message="internal server error"
            )

    def _read(self, path: str, kind: str, key: str, offset: int, limit: int) -> RepoResponse:
        if kind == "metadata":
            content = self._read_metadata(key)
            if content is None:
                return _absent(path, offset)
            _check_offset(path, offset, len(content))
            data = content[offset : offset + limit]
            total = len(content)
        else:
            blob = self._open_target(key)
            if blob is None:
                return _absent(path, offset)
            with blob:
                total = blob.seek(0, os.SEEK_END)
                _check_offset(path, offset, total)
                blob.seek(offset)
                data = blob.read(min(limit, total - offset))
        return RepoResponse(status=RepoResponse.OK, data=data, offset=offset, total_length=total)


def _absent(path: str, offset: int) -> RepoResponse:
    return RepoResponse(status=RepoResponse.ABSENT, offset=offset, message=f"no file {path!r}")


def _check_offset(path: str, offset: int, total: int) -> None:
    if offset > total:
        raise _BadRequestError(f"offset {offset} is past the end of {path!r} ({total} bytes)")


class DistributionServer:
    """Answers repository requests arriving over MQTT with a :class:`RepoResponder`.

    Answers are computed on the MQTT network thread; each is one chunk read, so this keeps
    requests in order without a thread pool. With ``share_group``, several servers split the
    requests between them (an MQTT shared subscription).
    """

    def __init__(
        self, mqtt: MqttClient, responder: RepoResponder, *, share_group: str | None = None
    ) -> None:
        self._mqtt = mqtt
        self._responder = responder
        self._filter = (
            topics.shared(share_group, topics.REPO_REQUEST_FILTER)
            if share_group
            else topics.REPO_REQUEST_FILTER
        )
        self._clamped_to: int | None = None

    def start(self) -> None:
        """Subscribe to repository requests (the client must be connected or connecting)."""
        self._mqtt.subscribe(self._filter, self._on_request, qos=1)
        logger.info("serving the repository on %s via %s", self._filter, self._mqtt.address)

    def stop(self) -> None:
        """Stop answering; the MQTT client stays open."""
        self._mqtt.unsubscribe(self._filter)

    def chunk_limit(self, response_topic: str, correlation_data: bytes) -> int | None:
        """The most data bytes an answer may carry so the PUBLISH fits the broker's Maximum
        Packet Size; None when the broker announced no limit."""
        max_packet = self._mqtt.max_packet_size
        if max_packet is None:
            return None
        overhead = _PACKET_HEADROOM + len(response_topic.encode()) + len(correlation_data)
        limit = max(1, max_packet - overhead)
        if limit < self._responder.chunk_size and limit != self._clamped_to:
            self._clamped_to = limit
            logger.info(
                "answering in chunks of at most %d bytes instead of %d: broker %s accepts "
                "packets of up to %d bytes",
                limit,
                self._responder.chunk_size,
                self._mqtt.address,
                max_packet,
            )
        return limit

    def _on_request(self, message: Message) -> None:
        client_id = topics.repo_request_client(message.topic)
        if client_id is None or message.response_topic is None:
            logger.warning(
                "dropping a request on %s without a response topic or client id", message.topic
            )
            return
        expected = topics.repo_response(client_id)
        if message.response_topic != expected:
            logger.warning(
                "dropping a request from %s: answers go to %s only, not %s",
                client_id,
                expected,
                message.response_topic,
            )
            return
        correlation = message.correlation_data or b""
        answer = self._responder.answer(
            message.payload, max_chunk=self.chunk_limit(expected, correlation)
        )
        try:
            self._mqtt.publish(expected, answer, qos=1, correlation_data=message.correlation_data)
        except TransportError as error:
            logger.warning("cannot answer %s: %s", client_id, error)
