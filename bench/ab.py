"""A/B: an older revision of the gateway against the working tree, in one run, alternating.

Box noise (other processes, CPU frequency, the load generator sharing the cores) moves single
runs by tens of percent, so one before/after pair proves little. This runs both sides in the
same session, ``--rounds`` times, swapping the order every round (base first, then working tree
first, ...), and reports per-round figures and their medians. Besides requests/s and latency it
reads the gateway process's CPU time from /proc, so "CPU µs per request" shows work saved even
when the load generator, not the server, limits throughput.

The base revision is extracted with ``git archive`` into a temporary directory and run from
there (the load generator, models and this script always come from the working tree).
``--base .`` runs the working tree on both sides, to compare settings (``--base-arg`` /
``--work-arg`` pass extra ``gateway serve`` flags to one side).

Scenarios (``--model``: ``mlp`` by default, or another of bench/batching.py's models such as
the compute-bound ``convnet``; ``max_batch_size`` 64, queue delay 500 µs as there):
``batching`` / ``nobatch``: closed loop at each ``--concurrency`` (``batching`` also records
the server's batch-size histogram, executions per batch size);
``overload``: capacity at the highest concurrency, then open-loop load at 3x it for twice
``--duration`` with a 50 ms deadline on every request (admitted p99, shed latency, memory);
``tenants`` (``mlp``, no batching, ``--auth required``; tenant A limited to 50 req/s, burst 20):
the gateway's CPU per call while A calls far over its limit in a closed loop (16 at once), then
tenant B's p99 (tritonclient, concurrency 1) alone vs while A floods at 5x its limit.

    .venv/bin/python -m bench.ab --base HEAD~1 batching [--rounds 5] [--duration 2]
    .venv/bin/python -m bench.ab --base HEAD batching --model convnet --name ab_convnet
    .venv/bin/python -m bench.ab --base . --work-arg=--admission-min-in-flight=8 overload

Prints one JSON object per round and one per side with the medians; writes
bench/results/ab_<scenario>.json (``--name`` to change).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections import Counter
from io import BytesIO
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton

from bench._common import emit, gateway_process, rss_mib, save, summarize
from bench.batching import MODELS, batch_histogram, delta, gateway_config, open_loop
from bench.loadgen import encode_request, percentile_ms, run_closed_loop
from bench.tenants import b_round, flooding
from edgefabric.samples import write_model
from edgefabric.security.limits import TenantLimits
from edgefabric.security.tokens import Role, TokenStore

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("batching", "nobatch", "overload", "tenants")
OVERLOAD_FACTOR = 3
OVERLOAD_DEADLINE_S = 0.05
TENANT_A_RATE = 50.0
TENANT_FLOOD_FACTOR = 5
TENANT_CONCURRENCY = 16
TENANT_B_REQUESTS = 1000
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def git(*args: str) -> bytes:
    """Run git in this checkout; its standard output."""
    executable = shutil.which("git")
    if executable is None:
        raise SystemExit("bench.ab needs git on PATH to extract the base revision")
    return subprocess.run([executable, *args], cwd=ROOT, check=True, capture_output=True).stdout


def describe_worktree() -> str:
    """The working tree's commit, with ``+dirty`` when it has uncommitted changes."""
    dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    return git("rev-parse", "--short", "HEAD").decode().strip() + ("+dirty" if dirty else "")


def extract(revision: str, into: Path) -> str:
    """Write the tree of ``revision`` under ``into``; returns its short commit id."""
    commit = git("rev-parse", "--short", "--verify", f"{revision}^{{commit}}").decode().strip()
    archive = git("archive", "--format=tar", commit)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return commit


async def closed(
    address: str,
    pid: int,
    request: bytes,
    concurrency: int,
    duration_s: float,
    *,
    model: str | None = None,
):
    """One closed-loop level; CPU (and, given ``model``, the batch-size histogram) is counted
    over the measured requests only."""
    await run_closed_loop(address, request, concurrency=concurrency, duration_s=0.5, warmup_s=0)
    batches_before = batch_histogram(address, model) if model else {}
    before = cpu_seconds(pid)
    load = await run_closed_loop(
        address, request, concurrency=concurrency, duration_s=duration_s, warmup_s=0
    )
    cpu = cpu_seconds(pid) - before
    answered = sum(load.codes.values())
    summary = load.summary()
    row: dict[str, Any] = {
        "requests_per_s": summary["requests_per_s"],
        "p50_ms": summary["p50_ms"],
        "p99_ms": summary["p99_ms"],
        "errors": answered - load.ok,
        "cpu_us_per_request": round(cpu / max(answered, 1) * 1e6, 1),
    }
    if model:
        histogram = delta(batch_histogram(address, model), batches_before)
        executions = sum(histogram.values())
        row["rows_per_batch"] = round(
            sum(size * count for size, count in histogram.items()) / max(executions, 1), 2
        )
        row["batches_of_one_share"] = round(histogram.get(1, 0) / max(executions, 1), 3)
        row["batches"] = {str(size): count for size, count in sorted(histogram.items())}
    return row


async def overload(address: str, pid: int, request: bytes, concurrency: int, duration_s: float):
    capacity = (await closed(address, pid, request, concurrency, duration_s))["requests_per_s"]
    rss_before = rss_mib(pid)
    cpu_before = cpu_seconds(pid)
    result = await open_loop(
        address, request, OVERLOAD_FACTOR * capacity, 2 * duration_s, OVERLOAD_DEADLINE_S
    )
    codes: dict[str, int] = result["codes"]
    return {
        "capacity_per_s": capacity,
        **result,
        "ok_share": round(codes.get("OK", 0) / max(sum(codes.values()), 1), 3),
        "cpu_s": round(cpu_seconds(pid) - cpu_before, 2),
        "rss_before_mib": rss_before,
        "rss_after_mib": rss_mib(pid),
    }


async def refused_calls(
    address: str, pid: int, request: bytes, token: str, *, concurrency: int, duration_s: float
) -> dict[str, Any]:
    """Closed loop as a tenant far over its rate limit: the gateway's CPU per (mostly refused)
    call, and how fast refusals come back."""
    metadata = (("authorization", f"Bearer {token}"),)
    codes: Counter[str] = Counter()
    refused_s: list[float] = []
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer", None, None)

        async def worker(stop_at: float, record: bool) -> None:
            while (began := time.perf_counter()) < stop_at:
                try:
                    await call(request, metadata=metadata)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                if record:
                    codes[code] += 1
                    if code != "OK":
                        refused_s.append(time.perf_counter() - began)

        for record, seconds in ((False, 0.5), (True, duration_s)):
            before = cpu_seconds(pid)
            stop_at = time.perf_counter() + seconds
            await asyncio.gather(*(worker(stop_at, record) for _ in range(concurrency)))
            cpu = cpu_seconds(pid) - before
    calls = sum(codes.values())
    return {
        "calls_per_s": round(calls / duration_s, 1),
        "refused_share": round(1 - codes.get("OK", 0) / max(calls, 1), 3),
        "refused_p50_ms": percentile_ms(refused_s, 50),
        "cpu_us_per_call": round(cpu / max(calls, 1) * 1e6, 1),
    }


def isolation(
    address: str, token_a: str, token_b: str, flood_per_s: float, requests: int
) -> dict[str, Any]:
    """Tenant B's p99 (tritonclient, concurrency 1) alone and while A floods at
    ``flood_per_s``, in the phases alone, flood, flood, alone."""
    phases: dict[str, list[float]] = {"alone": [], "flood": []}
    flood_codes: Counter[str] = Counter()
    with triton.InferenceServerClient(address) as client:
        b_round(client, token_b, 200)  # warm-up
        for phase in ("alone", "flood", "flood", "alone"):
            if phase == "alone":
                phases[phase] += b_round(client, token_b, requests)
                continue
            with flooding(address, token_a, flood_per_s) as report:
                phases[phase] += b_round(client, token_b, requests)
            flood_codes.update(report["codes"])
    alone, flood = summarize(phases["alone"]), summarize(phases["flood"])
    return {
        "b_alone_p50_ms": alone["p50_ms"],
        "b_alone_p99_ms": alone["p99_ms"],
        "b_flood_p50_ms": flood["p50_ms"],
        "b_flood_p99_ms": flood["p99_ms"],
        "b_p99_rise": round(flood["p99_ms"] / alone["p99_ms"] - 1, 3),
        "a_refused_share": round(
            1 - flood_codes.get("OK", 0) / max(sum(flood_codes.values()), 1), 3
        ),
    }


async def _tenant_refusals(address: str, pid: int, request: bytes, token: str, duration_s: float):
    return await refused_calls(
        address, pid, request, token, concurrency=TENANT_CONCURRENCY, duration_s=duration_s
    )


def medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key medians of the numeric fields of several rounds; nested results (one per
    concurrency) likewise. Status-code counts are summed instead."""
    out: dict[str, Any] = {}
    for key, value in rows[0].items():
        if key == "batches":  # histograms: summed over the rounds
            summed: dict[str, int] = {}
            for row in rows:
                for size, count in row[key].items():
                    summed[size] = summed.get(size, 0) + count
            out[key] = dict(sorted(summed.items(), key=lambda item: int(item[0])))
        elif key == "details":  # first message per status, over the rounds
            merged: dict[str, str] = {}
            for row in rows:
                for code, message in row.get(key, {}).items():
                    merged.setdefault(code, message)
            out[key] = merged
        elif key == "codes":
            total: dict[str, int] = {}
            for row in rows:
                for code, count in row[key].items():
                    total[code] = total.get(code, 0) + count
            out[key] = total
        elif isinstance(value, dict):
            out[key] = medians([row[key] for row in rows])
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values = [row[key] for row in rows if row.get(key) is not None]
            out[key] = round(statistics.median(values), 3) if values else None
    return out


def main() -> None:  # noqa: PLR0915  # one linear script
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=SCENARIOS)
    parser.add_argument("--base", required=True, help="git revision to compare ('.': this tree)")
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--base-arg", action="append", default=[], help="gateway flag, base")
    parser.add_argument("--work-arg", action="append", default=[], help="gateway flag, tree")
    parser.add_argument("--name", help="results file name (default ab_<scenario>)")
    args = parser.parse_args()
    if args.rounds < 1 or args.duration <= 0:
        parser.error(
            f"--rounds must be >= 1 and --duration > 0, got {args.rounds}, {args.duration}"
        )
    levels = [int(c) for c in args.concurrency.split(",")]
    results: list[dict[str, Any]] = []
    rows: dict[str, list[dict[str, Any]]] = {"base": [], "work": []}

    with tempfile.TemporaryDirectory(prefix="ef-ab-") as tmp:
        root = Path(tmp)
        sources: dict[str, Path | None] = {"base": None, "work": None}
        labels = {"work": describe_worktree()}
        if args.base == ".":
            labels["base"] = labels["work"]
        else:
            sources["base"] = root / "base"
            labels["base"] = extract(args.base, root / "base")
        extra = {"base": args.base_arg, "work": args.work_arg}
        repository = root / "models"
        batching = args.scenario not in ("nobatch", "tenants")
        if args.scenario == "tenants":  # tenant A limited (and flooding), tenant B not
            store = TokenStore.in_home(root / "home")
            store.set_limits("tenant-a", TenantLimits(rate_per_s=TENANT_A_RATE, burst=20))
            token_a, _ = store.create(Role.INFER, ["*"], "tenant-a")
            token_b, _ = store.create(Role.INFER, ["*"], "tenant-b")
            auth = ["--auth", "required", "--home", str(root / "home")]
            extra = {side: [*flags, *auth] for side, flags in extra.items()}
        model = args.model
        build, input_name, dims = MODELS[model]
        write_model(repository, model, build(), config=gateway_config(model, batching=batching))
        request = encode_request(model, {input_name: np.ones((1, *dims), np.float32)})
        histograms = model if args.scenario == "batching" else None
        emit(
            {"bench": "ab", "scenario": args.scenario, "model": model, "sides": labels,
             "args": extra},
            results,
        )  # fmt: skip

        for round_ in range(args.rounds):
            for side in ("base", "work") if round_ % 2 == 0 else ("work", "base"):
                with gateway_process(repository, *extra[side], source=sources[side]) as gw:
                    address, pid = gw
                    if args.scenario == "tenants":
                        row = {
                            "refused": asyncio.run(
                                _tenant_refusals(address, pid, request, token_a, args.duration)
                            ),
                            "isolation": isolation(
                                address,
                                token_a,
                                token_b,
                                TENANT_A_RATE * TENANT_FLOOD_FACTOR,
                                TENANT_B_REQUESTS,
                            ),
                        }
                    elif args.scenario == "overload":
                        row = asyncio.run(
                            overload(address, pid, request, levels[-1], args.duration)
                        )
                    else:
                        row = {
                            f"c{c}": asyncio.run(
                                closed(address, pid, request, c, args.duration, model=histograms)
                            )
                            for c in levels
                        }
                rows[side].append(row)
                emit({"bench": "ab", "round": round_, "side": side, **row}, results)
        for side, side_rows in rows.items():
            emit({"bench": "ab", "side": side, "rev": labels[side], "median": medians(side_rows)},
                 results)  # fmt: skip
    default_name = f"ab_{args.scenario}" + ("" if args.model == "mlp" else f"_{args.model}")
    print(f"# written to {save(args.name or default_name, results)}")


if __name__ == "__main__":
    main()
