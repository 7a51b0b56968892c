"""Latency one routing hop adds at 64 KB payloads: client -> proxy -> backend vs client -> backend.

The backend is an edgefabric gateway process serving ``identity_fp32`` on FP32 [1, 16384]
(64 KiB each way). The proxy is a minimal grpc.aio server in its own process whose ModelInfer
forwards through :class:`gateway.pools.remote.RemoteKServePool` (the gateway's servicer is not
wired to the router yet). The client is ``tritonclient.grpc`` in a closed loop at concurrency 1;
direct and hop rounds alternate so drift hits both alike. Prints one JSON object per result;
writes bench/results/routing_hop.json.

    .venv/bin/python -m bench.routing_hop [--requests 3000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from bench._common import emit, gateway_process, save, summarize
from edgefabric.errors import EdgefabricError, grpc_status_for
from edgefabric.samples import identity_model, write_model
from gateway.pools.remote import RemoteKServePool

MODEL = "identity_fp32"
SHAPE = (1, 16384)  # 64 KiB of FP32
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
TARGETS = {"added_p50_ms": 0.5, "added_p99_ms": 2.0}


class ForwardingServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """ModelInfer only, handed to one remote pool with the caller's remaining deadline."""

    def __init__(self, pool: RemoteKServePool) -> None:
        self._pool = pool

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.ModelInferResponse:
        try:
            return await self._pool.infer(request, timeout_s=context.time_remaining())
        except EdgefabricError as exc:
            await context.abort(grpc_status_for(exc), str(exc))
            raise  # unreachable: abort raises


async def serve_proxy(backend: str, channels: int) -> None:
    """Forward ModelInfer to ``backend`` until SIGTERM; prints the bound address first."""
    pool = RemoteKServePool("bench", backend, channels=channels)
    await pool.start()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(ForwardingServicer(pool), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"proxy listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(1.0)
    await pool.stop()


@contextmanager
def proxy_process(backend: str, channels: int) -> Iterator[str]:
    """Run :func:`serve_proxy` in its own process; yields its host:port."""
    command = [sys.executable, "-m", "bench.routing_hop", "--proxy-for", backend]
    command += ["--channels", str(channels)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"proxy did not start: {line!r}")
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        process.terminate()
        process.wait(timeout=30)


def timed(
    client: triton.InferenceServerClient, tensor: triton.InferInput, count: int
) -> list[float]:
    """Latencies of ``count`` sequential requests."""
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        client.infer(MODEL, [tensor])
        latencies.append(time.perf_counter() - start)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per path, over all rounds")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--channels", type=int, default=2, help="proxy connections to backend")
    parser.add_argument("--proxy-for", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy_for:
        asyncio.run(serve_proxy(args.proxy_for, args.channels))
        return

    results: list[dict[str, Any]] = []
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    tensor = triton.InferInput("input", list(SHAPE), "FP32")
    tensor.set_data_from_numpy(x)
    per_round = args.requests // args.rounds
    latencies: dict[str, list[float]] = {"direct": [], "via_hop": []}
    with tempfile.TemporaryDirectory() as tmp:
        write_model(Path(tmp), MODEL, identity_model("FP32"))
        with (
            gateway_process(Path(tmp)) as (backend, _pid),
            proxy_process(backend, args.channels) as proxy,
            triton.InferenceServerClient(backend) as direct,
            triton.InferenceServerClient(proxy) as via_hop,
        ):
            clients = {"direct": direct, "via_hop": via_hop}
            answers = {
                name: c.infer(MODEL, [tensor]).as_numpy("output") for name, c in clients.items()
            }
            if not all(np.array_equal(a, x) for a in answers.values()):
                raise RuntimeError("the hop changed the answer")
            for client in clients.values():
                timed(client, tensor, args.warmup)
            for round_index in range(args.rounds):
                order = list(clients) if round_index % 2 == 0 else list(reversed(clients))
                for name in order:
                    latencies[name] += timed(clients[name], tensor, per_round)

    summaries = {name: summarize(values) for name, values in latencies.items()}
    emit(
        {
            "bench": "routing_hop",
            "what": (
                "tritonclient.grpc closed loop, concurrency 1, FP32 [1,16384] (64 KiB each way) "
                "on identity_fp32; backend: an edgefabric gateway process; hop: a minimal "
                "grpc.aio proxy process (in bench/routing_hop.py, not the gateway servicer, "
                f"whose router wiring is pending) forwarding ModelInfer through RemoteKServePool "
                f"over {args.channels} channels; direct and hop rounds alternate"
            ),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
        results,
    )
    for name, summary in summaries.items():
        emit({"bench": "routing_hop", "target": name, **summary}, results)
    direct_s, hop_s = summaries["direct"], summaries["via_hop"]
    added = {
        "added_p50_ms": round(hop_s["p50_ms"] - direct_s["p50_ms"], 4),
        "added_p99_ms": round(hop_s["p99_ms"] - direct_s["p99_ms"], 4),
    }
    emit(
        {
            "bench": "routing_hop",
            "comparison": "via_hop_vs_direct",
            **added,
            "p50_ratio": round(hop_s["p50_ms"] / direct_s["p50_ms"], 2),
            "targets": TARGETS,
            "met": {key: added[key] <= TARGETS[key] for key in TARGETS},
        },
        results,
    )
    print(f"# written to {save('routing_hop', results)}")


if __name__ == "__main__":
    main()
