"""Dynamic batching side by side: the gateway (batching off/on), raw ONNX Runtime, MLServer, Triton.

Same closed-loop load generator (bench/loadgen.py), same models, same machine, one run. Then an
overload run: open-loop load at 3x the measured capacity with a deadline on every request.
Models: ``mlp`` and ``cnn`` (3x32x32, tens of µs per image) are protocol-bound; ``convnet``
(3x128x128, milliseconds per image) is the compute-bound one, where the gateway's throughput is
compared with raw in-process ONNX Runtime at the batch sizes the batcher formed.
Prints one JSON object per result; writes bench/results/batching.json.

    bash bench/peers/setup.sh          # once: MLServer and Triton in their own venvs
    .venv/bin/python -m bench.batching [--duration 4] [--concurrency 1,16,64] [--no-peers]
    .venv/bin/python -m bench.batching --models convnet --no-peers --name batching_convnet
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton

from bench._common import emit, gateway_process, rss_mib, save
from bench.loadgen import encode_request, percentile_ms, run_closed_loop
from bench.peers.launch import MLSERVER_VENV, TRITON_VENV, start_mlserver, start_triton
from edgefabric.samples import cnn_model, convnet_model, mlp_model, write_model

MAX_BATCH = 64
DELAY_US = 500
OVERLOAD_CHANNELS = 4
RAW_MIN_RUNS = 3
RAW_SLICES = 3
RAW_SECONDS_PER_SIZE = 0.9
MODELS: dict[str, tuple[Callable[[], Any], str, tuple[int, ...]]] = {
    "mlp": (mlp_model, "x", (16,)),
    "cnn": (cnn_model, "image", (3, 32, 32)),
    "convnet": (convnet_model, "image", (3, 128, 128)),
}


def gateway_config(name: str, *, batching: bool) -> str:
    block = f"dynamic_batching {{ max_queue_delay_microseconds: {DELAY_US} }}" if batching else ""
    return f'name: "{name}"\nmax_batch_size: {MAX_BATCH}\n{block}\n'


@contextmanager
def gateway_target(root: Path, name: str, *, batching: bool) -> Iterator[tuple[str, int]]:
    repository = root / ("gw-batch" if batching else "gw-nobatch")
    build, _, _ = MODELS[name]
    write_model(repository, name, build(), config=gateway_config(name, batching=batching))
    with gateway_process(repository) as (address, pid):
        yield address, pid


@contextmanager
def peer_target(kind: str, model_path: Path, workdir: Path) -> Iterator[tuple[str, int]]:
    if kind == "mlserver":
        peer = start_mlserver(model_path, workdir, MAX_BATCH, DELAY_US / 1e6)
    else:
        peer = start_triton(model_path, workdir, MAX_BATCH, DELAY_US)
    with peer:
        yield peer.url, peer.process.pid


def batch_histogram(address: str, model: str) -> dict[int, int]:
    """Executions per batch size, from the server's own statistics."""
    with triton.InferenceServerClient(address) as client:
        stats = client.get_inference_statistics(model).model_stats[0]
    return {b.batch_size: b.compute_infer.count for b in stats.batch_stats}


def raw_rows_per_s(
    session: ort.InferenceSession,
    name: str,
    input_name: str,
    dims: tuple[int, ...],
    histogram: dict[int, int],
) -> float:
    """In-process ONNX Runtime throughput for the same mix of batch sizes (the limit).

    Each size is timed in ``RAW_SLICES`` slices of at least ``RAW_MIN_RUNS`` runs and
    ``RAW_SECONDS_PER_SIZE / RAW_SLICES`` seconds; the fastest slice counts, so a noisy
    moment on the box lowers the gateway's fraction, never raises it.
    """
    rows = seconds = 0.0
    for size, count in histogram.items():
        x = np.random.default_rng(size).standard_normal((size, *dims)).astype(np.float32)
        session.run(None, {input_name: x})
        per_run = math.inf
        for _ in range(RAW_SLICES):
            runs = 0
            start = time.perf_counter()
            while runs < RAW_MIN_RUNS or (
                time.perf_counter() - start < RAW_SECONDS_PER_SIZE / RAW_SLICES
            ):
                session.run(None, {input_name: x})
                runs += 1
            per_run = min(per_run, (time.perf_counter() - start) / runs)
        rows += size * count
        seconds += per_run * count
    return rows / seconds if seconds else 0.0


def delta(after: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}


async def open_loop(
    address: str,
    request: bytes,
    rate_per_s: float,
    duration_s: float,
    deadline_s: float,
    *,
    channels: int = OVERLOAD_CHANNELS,
) -> dict[str, Any]:
    """Send at a fixed rate regardless of answers; every request carries a gRPC deadline.

    Requests are spread over ``channels`` connections, as from several clients: over one, the
    server's per-connection stream limit (128) refuses the excess before the server sees it.
    """
    opened = [grpc.aio.insecure_channel(address) for _ in range(channels)]
    try:
        calls = [
            ch.unary_unary("/inference.GRPCInferenceService/ModelInfer", None, None)
            for ch in opened
        ]
        ok: list[float] = []
        shed: list[float] = []
        codes: dict[str, int] = {}
        details: dict[str, str] = {}  # the first message seen with each status

        async def one(call: Any) -> None:
            start = time.perf_counter()
            try:
                await call(request, timeout=deadline_s)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                details.setdefault(code, exc.details() or "")
            elapsed = time.perf_counter() - start
            codes[code] = codes.get(code, 0) + 1
            (ok if code == "OK" else shed).append(elapsed)

        tasks = []
        began = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) - began < duration_s:
            due = int((now - began) * rate_per_s) - sent
            for index in range(due):
                tasks.append(asyncio.ensure_future(one(calls[(sent + index) % channels])))
            sent += max(due, 0)
            await asyncio.sleep(0.001)
        await asyncio.gather(*tasks)
        offered = sent / duration_s
    finally:
        for channel in opened:
            await channel.close(None)

    return {
        "offered_per_s": round(offered, 1),
        "codes": codes,
        "details": details,
        "ok_p99_ms": percentile_ms(ok, 99),
        "deadline_ms": deadline_s * 1e3,
        "shed_p99_ms": percentile_ms(shed, 99),
        "shed_p50_ms": percentile_ms(shed, 50),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--name", default="batching", help="results file bench/results/NAME.json")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    peers = (
        []
        if args.no_peers
        else [k for k, v in (("mlserver", MLSERVER_VENV), ("triton", TRITON_VENV)) if v.exists()]
    )
    results: list[dict[str, Any]] = []
    table: dict[tuple[str, str, int], dict[str, Any]] = {}

    with tempfile.TemporaryDirectory(prefix="ef-bench-") as tmp:
        root = Path(tmp)
        for name in args.models.split(","):
            build, input_name, dims = MODELS[name]
            model_path = write_model(root / "plain", name, build())
            session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
            request = encode_request(name, {input_name: np.ones((1, *dims), np.float32)})
            targets: list[tuple[str, Callable[[], AbstractContextManager[tuple[str, int]]]]] = [
                ("gateway_nobatch", functools.partial(gateway_target, root, name, batching=False)),
                ("gateway_batch", functools.partial(gateway_target, root, name, batching=True)),
            ]
            targets += [
                (kind, functools.partial(peer_target, kind, model_path, root / kind / name))
                for kind in peers
            ]
            for target, start in targets:
                with start() as (address, pid):
                    for concurrency in levels:
                        before = batch_histogram(address, name) if target == "gateway_batch" else {}
                        load = asyncio.run(
                            run_closed_loop(
                                address, request, concurrency=concurrency, duration_s=args.duration
                            )
                        )
                        row = {
                            "bench": "batching",
                            "model": name,
                            "target": target,
                            **load.summary(),
                            "rss_mib": rss_mib(pid),
                        }
                        if target == "gateway_batch":
                            histogram = delta(batch_histogram(address, name), before)
                            row["batches"] = histogram
                            raw = raw_rows_per_s(session, name, input_name, dims, histogram)
                            row["raw_ort_rows_per_s_same_batches"] = round(raw, 1)
                            row["fraction_of_raw_ort"] = (
                                round(row["requests_per_s"] / raw, 3) if raw else None
                            )
                        table[(name, target, concurrency)] = row
                        emit(row, results)
                    if name == "mlp" and target == "gateway_batch":
                        capacity = table[(name, target, levels[-1])]["requests_per_s"]
                        rss_before = rss_mib(pid)
                        overload = asyncio.run(
                            open_loop(address, request, 3 * capacity, args.duration, 0.05)
                        )
                        emit(
                            {
                                "bench": "overload",
                                "model": name,
                                "target": target,
                                "capacity_per_s": capacity,
                                **overload,
                                "rss_before_mib": rss_before,
                                "rss_after_mib": rss_mib(pid),
                            },
                            results,
                        )
            for concurrency in levels:
                mine = table.get((name, "gateway_batch", concurrency))
                for other in ("gateway_nobatch", *peers):
                    theirs = table.get((name, other, concurrency))
                    if mine and theirs and theirs["requests_per_s"]:
                        emit(
                            {
                                "bench": "batching",
                                "comparison": f"gateway_batch_vs_{other}",
                                "model": name,
                                "concurrency": concurrency,
                                "throughput_ratio": round(
                                    mine["requests_per_s"] / theirs["requests_per_s"], 2
                                ),
                                "p99_ratio": round(mine["p99_ms"] / theirs["p99_ms"], 2)
                                if theirs["p99_ms"]
                                else None,
                            },
                            results,
                        )
    print(f"# written to {save(args.name, results)}")


if __name__ == "__main__":
    main()
