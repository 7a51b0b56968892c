"""Tenant isolation: tenant B's latency alone vs while tenant A floods past its rate limit.

One gateway process (``--auth required``) serves ``mlp`` (FP32 [1,16]). Tenant A's token has a
rate limit (``--a-rate`` requests/s, burst 20); a flood process sends A's requests open-loop at
``--flood-factor`` times that rate through grpc.aio, so most of them are shed with
RESOURCE_EXHAUSTED. Tenant B (no limit) runs tritonclient.grpc in a closed loop at concurrency
1. The two phases (B alone, B during the flood) alternate in rotating rounds so drift hits both
alike. Prints one JSON object per result; writes bench/results/tenants.json.

    .venv/bin/python -m bench.tenants [--requests 2000] [--rounds 6] [--a-rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb

from bench._common import emit, gateway_process, save, summarize
from edgefabric.samples import write_sample_repository
from edgefabric.security.limits import TenantLimits
from edgefabric.security.tokens import Role, TokenStore

TARGET_P99_RISE = 0.20


async def _flood(address: str, token: str, rate_per_s: float) -> None:
    """Send A's requests open-loop at ``rate_per_s`` until stdin closes; print code counts."""
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.ones((1, 16), dtype=np.float32).tobytes())
    codes: Counter[str] = Counter()
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )

        async def one() -> None:
            try:
                await stub(request, metadata=metadata, timeout=10)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1

        await channel.channel_ready()
        loop = asyncio.get_running_loop()
        closed = loop.run_in_executor(None, sys.stdin.read)
        pending: set[asyncio.Task[None]] = set()
        print("ready", flush=True)
        start, sent = time.perf_counter(), 0
        while not closed.done():
            due = int((time.perf_counter() - start) * rate_per_s) + 1
            for _ in range(due - sent):
                task = asyncio.create_task(one())
                pending.add(task)
                task.add_done_callback(pending.discard)
            sent = max(sent, due)
            await asyncio.sleep(1 / rate_per_s)  # pacing of the open loop, not synchronisation
        await asyncio.gather(*pending)
        elapsed = time.perf_counter() - start
    print(
        json.dumps({"sent": sent, "seconds": round(elapsed, 2), "codes": dict(codes)}), flush=True
    )


def b_round(client: triton.InferenceServerClient, token: str, count: int) -> list[float]:
    x = np.ones((1, 16), dtype=np.float32)
    tensor = triton.InferInput("x", [1, 16], "FP32")
    tensor.set_data_from_numpy(x)
    headers = {"authorization": f"Bearer {token}"}
    latencies = []
    for _ in range(count):
        began = time.perf_counter()
        client.infer("mlp", [tensor], headers=headers)
        latencies.append(time.perf_counter() - began)
    return latencies


@contextmanager
def flooding(address: str, token: str, rate_per_s: float) -> Iterator[dict[str, Any]]:
    """Tenant A's open-loop flood in its own process for the duration of the block; the dict
    it yields holds the flood's report (``sent``, ``seconds``, ``codes``) once the block ends."""
    command = [sys.executable, "-m", "bench.tenants", "--flood", address, token, str(rate_per_s)]
    flood = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert flood.stdout is not None
    assert flood.stdin is not None
    report: dict[str, Any] = {}
    try:
        if flood.stdout.readline().strip() != "ready":
            raise RuntimeError("the flood process did not start")
        yield report
    finally:
        flood.stdin.close()
        line = flood.stdout.readline()
        flood.wait(timeout=30)
    report.update(json.loads(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="B requests per phase")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--a-rate", type=float, default=200.0, help="tenant A's limit, req/s")
    parser.add_argument("--flood-factor", type=float, default=5.0, help="A sends this x its limit")
    parser.add_argument("--flood", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        address, token, rate = args.flood
        asyncio.run(_flood(address, token, float(rate)))
        return

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        home, repository = Path(tmp) / "home", write_sample_repository(Path(tmp) / "repo")
        store = TokenStore.in_home(home)
        store.set_limits("tenant-a", TenantLimits(rate_per_s=args.a_rate, burst=20))
        token_a, _ = store.create(Role.INFER, ["*"], "tenant-a")
        token_b, _ = store.create(Role.INFER, ["*"], "tenant-b")
        emit(
            {
                "bench": "tenants",
                "what": "tenant B p99 alone vs while tenant A floods at "
                f"{args.flood_factor:g}x its {args.a_rate:g} req/s limit; B: tritonclient.grpc "
                "closed loop at concurrency 1 on mlp FP32 [1,16]; A: grpc.aio open loop in its "
                "own process; one gateway process with --auth required; phases alternate in "
                "rotating rounds",
                "command": f"python -m bench.tenants --requests {args.requests} --rounds "
                f"{args.rounds} --a-rate {args.a_rate:g} --flood-factor {args.flood_factor:g}",
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "grpcio": grpc.__version__,
            },
            results,
        )
        alone: list[float] = []
        flooded: list[float] = []
        flood_codes: Counter[str] = Counter()
        flood_seconds = 0.0
        extra = ("--auth", "required", "--home", str(home))
        with (
            gateway_process(repository, *extra) as (address, _pid),
            triton.InferenceServerClient(address) as client,
        ):
            b_round(client, token_b, 200)  # warm-up
            for round_number in range(args.rounds):
                order = ("alone", "flood") if round_number % 2 == 0 else ("flood", "alone")
                for phase in order:
                    if phase == "alone":
                        alone += b_round(client, token_b, args.requests)
                        continue
                    with flooding(address, token_a, args.a_rate * args.flood_factor) as report:
                        flooded += b_round(client, token_b, args.requests)
                    flood_seconds += report["seconds"]
                    flood_codes.update(report["codes"])
        summary_alone, summary_flood = summarize(alone), summarize(flooded)
        emit({"bench": "tenants", "phase": "b_alone", **summary_alone}, results)
        emit({"bench": "tenants", "phase": "b_during_a_flood", **summary_flood}, results)
        sent = sum(flood_codes.values())
        rise = summary_flood["p99_ms"] / summary_alone["p99_ms"] - 1
        emit(
            {
                "bench": "tenants",
                "phase": "summary",
                "a_sent_per_s": round(sent / flood_seconds, 1) if flood_seconds else 0.0,
                "a_limit_per_s": args.a_rate,
                "a_codes": dict(flood_codes),
                "b_p99_rise": round(rise, 4),
                "b_p50_rise": round(summary_flood["p50_ms"] / summary_alone["p50_ms"] - 1, 4),
                "target_p99_rise": TARGET_P99_RISE,
                "met": rise <= TARGET_P99_RISE,
            },
            results,
        )
    print(f"wrote {save('tenants', results)}", file=sys.stderr)


if __name__ == "__main__":
    main()
