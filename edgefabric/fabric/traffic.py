"""Call the gateway as an application would and summarise the answers per pool."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

__all__ = ["POOL_PARAMETER", "TrafficSummary", "send_requests"]

POOL_PARAMETER = "edgefabric.pool"
"""Response parameter in which the gateway's router names the pool that answered."""


@dataclass
class TrafficSummary:
    """What a batch of requests saw: answers per pool and version, errors, latency."""

    by_pool: Counter[str] = field(default_factory=Counter)
    by_version: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    def percentile_ms(self, q: float) -> float:
        """The ``q``-th latency percentile of the successful requests (0.0 when none)."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0

    def lines(self) -> list[str]:
        """A readable summary."""
        total = sum(self.by_pool.values())
        pools = ", ".join(f"{pool} {count}" for pool, count in sorted(self.by_pool.items()))
        versions = ", ".join(f"v{v} {count}" for v, count in sorted(self.by_version.items()))
        lines = [
            f"{total} answered: per pool {pools or '-'}; per version {versions or '-'}",
            f"latency p50 {self.percentile_ms(50):.2f} ms, p99 {self.percentile_ms(99):.2f} ms",
        ]
        if self.errors:
            lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in self.errors.items()))
        return lines


def send_requests(
    address: str, model: str, count: int, *, timeout_s: float = 5.0, site: str | None = None
) -> TrafficSummary:
    """``count`` sequential ModelInfer calls with a 2x16 FP32 input, through ``tritonclient``."""
    summary = TrafficSummary()
    rng = np.random.default_rng(7)
    parameters = {"site": site} if site else None
    with triton.InferenceServerClient(address) as client:
        for _ in range(count):
            tensor = triton.InferInput("x", [2, 16], "FP32")
            tensor.set_data_from_numpy(rng.standard_normal((2, 16)).astype(np.float32))
            started = time.perf_counter()
            try:
                result = client.infer(
                    model, [tensor], client_timeout=timeout_s, parameters=parameters
                )
            except InferenceServerException as error:
                summary.errors[str(error.status())] += 1
                continue
            summary.latencies_ms.append((time.perf_counter() - started) * 1000)
            response = result.get_response()
            pool = response.parameters.get(POOL_PARAMETER)
            summary.by_pool[pool.string_param if pool is not None else "unknown"] += 1
            summary.by_version[response.model_version] += 1
    return summary
