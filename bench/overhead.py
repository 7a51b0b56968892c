"""Latency the gateway adds at concurrency 1: gateway vs the same ONNX Runtime model in-process.

Prints one JSON object per measurement and a final comparison; writes bench/results/overhead.json.
The empty ServerLive RPC on the same channel is the floor that Python gRPC itself costs.
Clients: a raw gRPC stub sending a pre-encoded request (the protocol and server cost alone) and
``tritonclient.grpc`` (what an application sees, including the client library's own encoding).

    .venv/bin/python bench/overhead.py [--requests 3000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from bench._common import emit, gateway_process, save, summarize
from edgefabric.samples import MLP_CONFIG, mlp_model, write_model


def measure(call: Callable[[], object], requests: int, warmup: int) -> list[float]:
    """Latency of ``requests`` sequential calls after ``warmup`` unmeasured ones."""
    for _ in range(warmup):
        call()
    latencies = []
    for _ in range(requests):
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rows", type=int, default=1)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    x = np.random.default_rng(0).standard_normal((args.rows, 16)).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        path = write_model(repository, "mlp", mlp_model(), config=MLP_CONFIG)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        in_process = summarize(
            measure(lambda: session.run(["logits"], {"x": x}), args.requests, args.warmup)
        )
        emit({"bench": "overhead", "target": "onnxruntime_in_process", **in_process}, results)

        with gateway_process(repository) as (address, _pid):
            request = pb.ModelInferRequest(model_name="mlp")
            request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
            request.raw_input_contents.append(x.tobytes())
            with grpc.insecure_channel(address) as channel:
                stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
                live = pb.ServerLiveRequest()
                floor = summarize(
                    measure(lambda: stub.ServerLive(live), args.requests, args.warmup)
                )
                raw = summarize(
                    measure(lambda: stub.ModelInfer(request), args.requests, args.warmup)
                )
            emit({"bench": "overhead", "target": "gateway_empty_rpc_floor", **floor}, results)
            emit({"bench": "overhead", "target": "gateway_raw_grpc_client", **raw}, results)

            with triton.InferenceServerClient(address) as client:
                tensor = triton.InferInput("x", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x)
                via_triton = summarize(
                    measure(lambda: client.infer("mlp", [tensor]), args.requests, args.warmup)
                )
            emit({"bench": "overhead", "target": "gateway_tritonclient", **via_triton}, results)

    for name, gateway in (("raw_grpc_client", raw), ("tritonclient", via_triton)):
        emit(
            {
                "bench": "overhead",
                "comparison": f"gateway_{name}_vs_in_process",
                "added_p50_ms": round(gateway["p50_ms"] - in_process["p50_ms"], 4),
                "added_p99_ms": round(gateway["p99_ms"] - in_process["p99_ms"], 4),
                "p50_ratio": round(gateway["p50_ms"] / in_process["p50_ms"], 2),
                "targets": {"added_p50_ms": 0.3, "added_p99_ms": 1.0},
            },
            results,
        )
    emit(
        {
            "bench": "overhead",
            "comparison": "gateway_infer_vs_empty_rpc",
            "handler_p50_ms": round(raw["p50_ms"] - floor["p50_ms"], 4),
            "handler_p99_ms": round(raw["p99_ms"] - floor["p99_ms"], 4),
            "note": "what serving adds beyond a ServerLive round trip on the same channel",
        },
        results,
    )
    print(f"# written to {save('overhead', results)}")


if __name__ == "__main__":
    main()
