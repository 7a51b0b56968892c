"""A closed-loop KServe v2 load generator on grpc.aio, the same for every server measured.

Requests are serialized once up front and sent as bytes, so the generator spends its CPU on
the transport, not on protobuf; this keeps the comparison about the servers.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

__all__ = ["LoadResult", "encode_request", "percentile_ms", "run_closed_loop"]

_INFER = "/inference.GRPCInferenceService/ModelInfer"


def percentile_ms(values_s: list[float], q: float) -> float | None:
    """The ``q``-th percentile of latencies in seconds, in milliseconds (None when empty)."""
    return round(float(np.percentile(values_s, q)) * 1e3, 3) if values_s else None


def encode_request(model: str, inputs: dict[str, np.ndarray], **parameters: int) -> bytes:
    """One ModelInferRequest with raw contents, serialized."""
    request = pb.ModelInferRequest(model_name=model)
    for name, array in inputs.items():
        datatype = {np.float32: "FP32", np.int64: "INT64"}[array.dtype.type]
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    for key, value in parameters.items():
        request.parameters[key].int64_param = value
    return bytes(request.SerializeToString())


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one closed-loop run measured."""

    concurrency: int
    seconds: float
    ok: int
    codes: dict[str, int]
    ok_latencies_s: list[float]
    error_latencies_s: list[float]

    def summary(self) -> dict[str, Any]:
        """Throughput and latency percentiles as JSON-ready numbers."""
        return {
            "concurrency": self.concurrency,
            "requests_per_s": round(self.ok / self.seconds, 1),
            "ok": self.ok,
            "codes": self.codes,
            "p50_ms": percentile_ms(self.ok_latencies_s, 50),
            "p99_ms": percentile_ms(self.ok_latencies_s, 99),
            "error_p99_ms": percentile_ms(self.error_latencies_s, 99),
        }


async def run_closed_loop(
    address: str,
    request: bytes,
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    deadline_s: float | None = None,
    channels: int = 1,
) -> LoadResult:
    """``concurrency`` workers each send, wait, send again, for ``duration_s`` after warm-up."""
    opened = [grpc.aio.insecure_channel(address) for _ in range(channels)]
    calls = [ch.unary_unary(_INFER, None, None) for ch in opened]
    codes: Counter[str] = Counter()
    ok_latencies: list[float] = []
    error_latencies: list[float] = []
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s

    async def worker(index: int) -> None:
        call = calls[index % len(calls)]
        while (now := time.perf_counter()) < stop_at:
            try:
                await call(request, timeout=deadline_s)
                code = "OK"
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            done = time.perf_counter()
            if now >= measure_from:
                codes[code] += 1
                (ok_latencies if code == "OK" else error_latencies).append(done - now)

    try:
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    finally:
        for channel in opened:
            await channel.close(None)
    return LoadResult(
        concurrency, duration_s, codes["OK"], dict(codes), ok_latencies, error_latencies
    )
