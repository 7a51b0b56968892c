"""Helpers shared by the benchmarks: latency summaries, timed calls and child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results"


def summarize(latencies_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean in milliseconds."""
    ms = np.asarray(latencies_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p90_ms": round(float(np.percentile(ms, 90)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "count": len(ms),
    }


def added_latency(path: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """What ``path`` adds over ``base`` at p50 and p99 (both :func:`summarize` results)."""
    return {
        "added_p50_ms": round(path["p50_ms"] - base["p50_ms"], 4),
        "added_p99_ms": round(path["p99_ms"] - base["p99_ms"], 4),
    }


def timed_infers(client: Any, model: str, inputs: Sequence[Any], count: int) -> list[float]:
    """Latencies, in seconds, of ``count`` sequential ``client.infer(model, inputs)`` calls
    (a ``tritonclient.grpc.InferenceServerClient``)."""
    latencies = []
    for _ in range(count):
        start = time.perf_counter()
        client.infer(model, list(inputs))
        latencies.append(time.perf_counter() - start)
    return latencies


def emit(result: dict[str, Any], sink: list[dict[str, Any]]) -> None:
    """Print one JSON object per result and keep it for the results file."""
    print(json.dumps(result), flush=True)
    sink.append(result)


def save(name: str, results: list[dict[str, Any]]) -> Path:
    """Write every result of a run to bench/results/<name>.json."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


@contextmanager
def ready_process(
    command: list[str], what: str, *, stop_timeout_s: float = 10.0, **popen: Any
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run ``command``, wait for its first line to say ``listening on HOST:PORT``; yields that
    address and the process, and stops it afterwards (SIGTERM, then SIGKILL after
    ``stop_timeout_s``)."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, **popen)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"{what} did not start: {line!r}")
        yield line.rsplit(" ", 1)[1].strip(), process
    finally:
        process.terminate()
        try:
            process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def gateway_process(
    repository: Path, *extra: str, source: Path | None = None
) -> Iterator[tuple[str, int]]:
    """Run ``edgefabric gateway serve`` in its own process; yields (host:port, pid).

    ``source``: run the code of that source tree (e.g. an extracted older revision) instead of
    the installed one.
    """
    command = [
        sys.executable, "-m", "edgefabric.cli", "--log-level", "WARNING", "gateway", "serve",
        "--model-repository", str(repository), "--grpc-port", "0", "--metrics-port", "-1", *extra,
    ]  # fmt: skip
    env = None if source is None else {**os.environ, "PYTHONPATH": str(source)}
    started = ready_process(command, "gateway", stop_timeout_s=30.0, cwd=source, env=env)
    with started as (address, process):
        yield address, process.pid


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")
