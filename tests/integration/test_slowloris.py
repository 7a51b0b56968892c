"""Slow-loris and half-open streams do not stop the gateway from serving others.

The attackers speak raw TCP and hand-made HTTP/2 frames (they must not be polite the way a
gRPC client is): many connections that send half the connection preface and stall, and one
connection that opens far more streams than ``max_concurrent_rpcs`` and never sends their
messages. A normal tritonclient client must still be answered, well within its deadline.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tests.conftest import GatewayThread

pytestmark = pytest.mark.integration

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS, _HEADERS, _PING, _ACK, _END_HEADERS = 0x4, 0x1, 0x6, 0x1, 0x4


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return (
        struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream_id) + payload
    )


def literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman coding."""
    raw_name, raw_value = name.encode(), value.encode()
    assert len(raw_name) < 127
    assert len(raw_value) < 127
    return b"\x00" + bytes([len(raw_name)]) + raw_name + bytes([len(raw_value)]) + raw_value


def infer_headers(authority: str) -> bytes:
    """The header block of a ModelInfer call whose message never comes."""
    return b"".join(
        literal(name, value)
        for name, value in (
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/inference.GRPCInferenceService/ModelInfer"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        )
    )


def wait_for_ping_ack(sock: socket.socket) -> None:
    """Read frames until the server acknowledges our PING: it has read every frame before it."""
    sock.settimeout(30)
    buffer = b""
    while True:
        while len(buffer) >= 9:
            length = int.from_bytes(buffer[:3], "big")
            if len(buffer) < 9 + length:
                break
            kind, flags = buffer[3], buffer[4]
            buffer = buffer[9 + length :]
            if kind == _PING and flags & _ACK:
                return
        data = sock.recv(65536)
        assert data, "the server closed the connection before answering the PING"
        buffer += data


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never read much
    return sock


@pytest.fixture
def gateway(start_gateway, sample_repository: Path) -> GatewayThread:
    """A gateway with the default limits (max_concurrent_rpcs 512)."""
    running: GatewayThread = start_gateway(sample_repository)
    return running


@pytest.fixture
def attackers() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def served_promptly(address: str) -> None:
    """A fresh tritonclient client gets a correct answer within a generous deadline."""
    with triton.InferenceServerClient(address) as client:
        tensor = triton.InferInput("x", [2, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
        result = client.infer("mlp", [tensor], client_timeout=10)
        assert result.as_numpy("logits").shape == (2, 8)
        assert client.is_server_ready(client_timeout=10)


def test_stalled_partial_prefaces_do_not_block_others(
    gateway: GatewayThread, attackers: ExitStack
) -> None:
    stalled = []
    for _ in range(200):
        sock = attackers.enter_context(connect(gateway.gateway.port))
        sock.sendall(PREFACE[:10])  # half a preface, then silence
        stalled.append(sock)
    served_promptly(gateway.address)
    # The server gives up on a connection that has not finished its handshake (10 s; gRPC's
    # own default is 120 s).
    sock = stalled[0]
    sock.settimeout(30)
    while sock.recv(4096):
        pass


def test_half_open_streams_do_not_use_up_the_server(
    gateway: GatewayThread, attackers: ExitStack
) -> None:
    # Two connections each open 300 ModelInfer streams and never send their messages: every
    # stream the server accepts holds an RPC slot (no deadline was set). 600 would take all
    # 512; one connection gets only max_concurrent_streams (128) of them.
    block = infer_headers(gateway.address)
    frames = [PREFACE, frame(_SETTINGS, 0, 0), frame(_SETTINGS, _ACK, 0)]
    frames += [frame(_HEADERS, _END_HEADERS, 2 * index + 1, block) for index in range(300)]
    frames.append(frame(_PING, 0, 0, b"loris..."))
    for _ in range(2):
        sock = attackers.enter_context(connect(gateway.gateway.port))
        sock.sendall(b"".join(frames))
        wait_for_ping_ack(sock)
    served_promptly(gateway.address)


def test_half_open_grpc_streams_do_not_block_others(gateway: GatewayThread) -> None:
    # A real gRPC client starts 600 ModelStreamInfer calls and never sends a request. (A
    # regression check: nothing tells the test when the server has seen them all.)
    async def attack() -> None:
        release = asyncio.Event()

        async def nothing() -> AsyncIterator[pb.ModelInferRequest]:
            await release.wait()
            return
            yield  # an async generator that yields nothing

        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            calls = [stub.ModelStreamInfer(nothing()) for _ in range(600)]
            try:
                await channel.channel_ready()
                await asyncio.to_thread(served_promptly, gateway.address)
            finally:
                release.set()
                for call in calls:
                    call.cancel()

    asyncio.run(attack())
