"""Latency one routing hop adds at 64 KB payloads: client -> proxy -> backend vs client -> backend.

The backend is an edgefabric gateway process serving ``identity_fp32`` on FP32 [1, 16384]
(64 KiB each way). Three hops in front of it: the real one, a second gateway process with no
local models started with ``--pool back=grpc://BACKEND`` (servicer, router, routing policy,
:class:`gateway.pools.remote.RemoteKServePool`); a minimal grpc.aio proxy process forwarding
through the same pool (what the pool costs without the gateway's servicer); and a proxy
forwarding through one bare grpc.aio stub (the floor of a Python gRPC hop). The client is
``tritonclient.grpc`` in a closed loop at concurrency 1; the paths alternate in rotating rounds
so drift hits all alike. Prints one JSON object per result; writes
bench/results/routing_hop.json.

    .venv/bin/python -m bench.routing_hop [--requests 3000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from bench._common import (
    added_latency,
    emit,
    gateway_process,
    ready_process,
    save,
    summarize,
    timed_infers,
)
from edgefabric.errors import EdgefabricError, grpc_status_for
from edgefabric.samples import identity_model, write_model
from gateway.pools.remote import RemoteKServePool

MODEL = "identity_fp32"
SHAPE = (1, 16384)  # 64 KiB of FP32
MAX_MESSAGE = 64 * 1024 * 1024
MESSAGE_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]
TARGETS = {"added_p50_ms": 0.5, "added_p99_ms": 2.0}


Forward = Callable[[pb.ModelInferRequest, float | None], Awaitable[pb.ModelInferResponse]]


class ForwardingServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """ModelInfer only, handed on with the caller's remaining deadline."""

    def __init__(self, forward: Forward) -> None:
        self._forward = forward

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        try:
            return await self._forward(request, context.time_remaining())
        except EdgefabricError as exc:
            await context.abort(grpc_status_for(exc), str(exc))
            raise  # unreachable: abort raises


async def serve_proxy(backend: str, mode: str, channels: int) -> None:
    """Forward ModelInfer to ``backend`` until SIGTERM; prints the bound address first.

    ``mode`` "pool" forwards through :class:`RemoteKServePool`; "bare" through one plain
    grpc.aio stub, the control that shows what the pool itself costs.
    """
    pool = RemoteKServePool("bench", backend, channels=channels, max_message_bytes=MAX_MESSAGE)
    bare = grpc.aio.insecure_channel(backend, options=MESSAGE_OPTIONS)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(bare)

    async def via_pool(request: pb.ModelInferRequest, timeout_s: float | None) -> Any:
        return await pool.infer(request, timeout_s=timeout_s)

    async def via_stub(request: pb.ModelInferRequest, timeout_s: float | None) -> Any:
        return await stub.ModelInfer(request, timeout=timeout_s)

    await pool.start()
    server = grpc.aio.server(options=MESSAGE_OPTIONS)
    servicer = ForwardingServicer(via_pool if mode == "pool" else via_stub)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"proxy listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(1.0)
    await pool.stop()
    await bare.close(None)


@contextmanager
def proxy_process(backend: str, mode: str, channels: int) -> Iterator[str]:
    """Run :func:`serve_proxy` in its own process; yields its host:port."""
    command = [sys.executable, "-m", "bench.routing_hop", "--proxy-for", backend]
    command += ["--proxy-mode", mode, "--channels", str(channels)]
    with ready_process(command, "proxy") as (address, _):
        yield address


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per path, over all rounds")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--channels", type=int, default=2, help="pool connections to backend")
    parser.add_argument("--proxy-for", help=argparse.SUPPRESS)
    parser.add_argument("--proxy-mode", choices=("pool", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy_for:
        asyncio.run(serve_proxy(args.proxy_for, args.proxy_mode, args.channels))
        return

    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    tensor = triton.InferInput("input", list(SHAPE), "FP32")
    tensor.set_data_from_numpy(x)
    per_round = args.requests // args.rounds
    paths = ("direct", "via_gateway_hop", "via_pool_hop", "via_bare_stub_hop")
    latencies: dict[str, list[float]] = {name: [] for name in paths}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        write_model(Path(tmp) / "backend", MODEL, identity_model("FP32"))
        (Path(tmp) / "front").mkdir()
        backend, _pid = stack.enter_context(gateway_process(Path(tmp) / "backend"))
        front, _front_pid = stack.enter_context(
            gateway_process(Path(tmp) / "front", "--pool", f"back=grpc://{backend}")
        )
        addresses = {
            "direct": backend,
            "via_gateway_hop": front,
            "via_pool_hop": stack.enter_context(proxy_process(backend, "pool", args.channels)),
            "via_bare_stub_hop": stack.enter_context(proxy_process(backend, "bare", 1)),
        }
        clients = {
            name: stack.enter_context(triton.InferenceServerClient(address))
            for name, address in addresses.items()
        }
        for client in clients.values():
            if not np.array_equal(client.infer(MODEL, [tensor]).as_numpy("output"), x):
                raise RuntimeError("a hop changed the answer")
            timed_infers(client, MODEL, [tensor], args.warmup)
        for round_index in range(args.rounds):  # rotate the order so drift hits every path
            shift = round_index % len(paths)
            for name in paths[shift:] + paths[:shift]:
                latencies[name] += timed_infers(clients[name], MODEL, [tensor], per_round)

    results: list[dict[str, Any]] = []
    emit(
        {
            "bench": "routing_hop",
            "what": (
                "added latency of one routing hop: tritonclient.grpc closed loop at concurrency "
                "1, FP32 [1,16384] (64 KiB each way) on identity_fp32; backend: an edgefabric "
                "gateway process. via_gateway_hop: a second gateway process (no local models, "
                "--pool back=grpc://BACKEND), the real routing hop; via_pool_hop: a minimal "
                "grpc.aio proxy forwarding through RemoteKServePool over "
                f"{args.channels} channels; via_bare_stub_hop: a proxy forwarding through one "
                "plain grpc.aio stub, the floor of a Python gRPC hop. Paths alternate in "
                "rotating rounds."
            ),
            "command": "python -m bench.routing_hop " + " ".join(sys.argv[1:]),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
        results,
    )
    summaries = {name: summarize(values) for name, values in latencies.items()}
    for name, summary in summaries.items():
        emit({"bench": "routing_hop", "target": name, **summary}, results)
    for hop in ("via_gateway_hop", "via_pool_hop"):
        added = added_latency(summaries[hop], summaries["direct"])
        emit(
            {
                "bench": "routing_hop",
                "comparison": f"{hop}_vs_direct",
                **added,
                "p50_ratio": round(summaries[hop]["p50_ms"] / summaries["direct"]["p50_ms"], 2),
                "targets": TARGETS,
                "met": {key: added[key] <= TARGETS[key] for key in TARGETS},
            },
            results,
        )
    emit(
        {
            "bench": "routing_hop",
            "comparison": "via_gateway_hop_vs_via_bare_stub_hop",
            **added_latency(summaries["via_gateway_hop"], summaries["via_bare_stub_hop"]),
            "note": "what the gateway (servicer, router, pool) adds over a bare Python gRPC hop",
        },
        results,
    )
    emit(
        {
            "bench": "routing_hop",
            "comparison": "via_pool_hop_vs_via_bare_stub_hop",
            **added_latency(summaries["via_pool_hop"], summaries["via_bare_stub_hop"]),
            "note": "what RemoteKServePool adds over forwarding with a bare grpc.aio stub",
        },
        results,
    )
    print(f"# written to {save('routing_hop', results)}")


if __name__ == "__main__":
    main()
