"""Latency while a backend dies: p99 in the seconds after a SIGKILL vs steady state.

Two edgefabric gateway processes serve ``mlp``; a front gateway process routes to both
(``--route mlp=one:1,two:1``). Closed-loop ``tritonclient.grpc`` clients (one thread each, a
10 s deadline per request) run through the front; after a steady period backend ``one`` is
killed with SIGKILL (a crash: no drain, connections reset) and the clients go on. Requests are
grouped by the time they started: *steady* (before the kill), *during* (the first
``--window-s`` after it) and *after*. Target: p99 during <= 2x steady p99, and no failed
request. Prints one JSON object; writes bench/results/failover.json.

    .venv/bin/python -m bench.failover [--clients 4] [--steady-s 5] [--after-s 5] [--window-s 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton

from bench._common import emit, gateway_process, save, summarize
from edgefabric.samples import mlp_model, write_model

TARGET_P99_RATIO = 2.0


def client_loop(
    address: str, stop: threading.Event, samples: list[tuple[float, float, bool]]
) -> None:
    """Closed loop until ``stop``: (start time, seconds, ok) per request."""
    x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
    tensor = triton.InferInput("x", [2, 16], "FP32")
    tensor.set_data_from_numpy(x)
    with triton.InferenceServerClient(address) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                client.infer("mlp", [tensor], client_timeout=10.0)
                ok = True
            except Exception:  # counted, not raised: the benchmark reports failures
                ok = False
            samples.append((started, time.perf_counter() - started, ok))


def window(samples: list[tuple[float, float, bool]], start: float, end: float) -> dict[str, Any]:
    """Latency summary and failures of the requests started in [start, end)."""
    chosen = [(s, ok) for t, s, ok in samples if start <= t < end]
    latencies = [s for s, ok in chosen if ok]
    return {**summarize(latencies or [0.0]), "failed": sum(not ok for _, ok in chosen)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--steady-s", type=float, default=5.0)
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--after-s", type=float, default=5.0)
    args = parser.parse_args()

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ef-failover-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        repository = root / "backend"
        write_model(repository, "mlp", mlp_model())
        (root / "front").mkdir()
        one, one_pid = stack.enter_context(gateway_process(repository))
        two, _ = stack.enter_context(gateway_process(repository))
        front, _ = stack.enter_context(
            gateway_process(
                root / "front",
                "--pool",
                f"one=grpc://{one}",
                "--pool",
                f"two=grpc://{two}",
                "--route",
                "mlp=one:1,two:1",
            )
        )
        per_client: list[list[tuple[float, float, bool]]] = [[] for _ in range(args.clients)]
        stop = threading.Event()
        threads = [
            threading.Thread(target=client_loop, args=(front, stop, samples))
            for samples in per_client
        ]
        for thread in threads:
            thread.start()
        time.sleep(args.warmup_s + args.steady_s)  # a timed benchmark phase, not a sync
        killed_at = time.perf_counter()
        os.kill(one_pid, signal.SIGKILL)
        time.sleep(args.window_s + args.after_s)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    samples = [sample for client in per_client for sample in client]
    first = min(t for t, _, _ in samples)
    steady = window(samples, first + args.warmup_s, killed_at)
    during = window(samples, killed_at, killed_at + args.window_s)
    after = window(samples, killed_at + args.window_s, float("inf"))
    ratio = during["p99_ms"] / steady["p99_ms"] if steady["p99_ms"] else float("inf")
    emit(
        {
            "benchmark": "failover",
            "scenario": "SIGKILL one of two backend gateways; front routes mlp=one:1,two:1",
            "clients": args.clients,
            "window_s": args.window_s,
            "steady": steady,
            "during_kill": during,
            "after_kill": after,
            "p99_ratio_during_vs_steady": round(ratio, 3),
            "target_p99_ratio": TARGET_P99_RATIO,
            "meets_target": ratio <= TARGET_P99_RATIO
            and steady["failed"] + during["failed"] + after["failed"] == 0,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        results,
    )
    print(f"wrote {save('failover', results)}")


if __name__ == "__main__":
    main()
