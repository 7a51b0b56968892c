"""Traffic shaping through the gateway: hedged requests, canary splits, shadow copies and
zero-downtime version swaps (through the admin service, as the CLI sends them).

Backends are real edgefabric gateways in-process on 127.0.0.1:0 (one of them slowed by a gate
the test holds shut); the client is tritonclient talking only to the front gateway. Backends
serving "mlp" differ in their hidden width, so every answer tells which one computed it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from edgefabric.samples import mlp_model, write_model
from gateway.admin import swap
from gateway.router import Router
from gateway.routing import Route
from tests.conftest import GatewayThread
from tests.integration.gated import GatedRuntime

pytestmark = pytest.mark.integration

X = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
BOTH_VERSIONS = 'name: "mlp"\nversion_policy: { all {} }\n'


def _repository(
    root: Path, *, hidden: int = 32, version: int = 1, config: str | None = None
) -> Path:
    write_model(root, "mlp", mlp_model(hidden=hidden), version=version, config=config)
    return root


def _infer(client: triton.InferenceServerClient, timeout_s: float = 10.0) -> triton.InferResult:
    tensor = triton.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    return client.infer("mlp", [tensor], client_timeout=timeout_s)


def _logits(result: triton.InferResult) -> np.ndarray:
    logits: np.ndarray | None = result.as_numpy("logits")
    assert logits is not None
    return logits


def _empty(root: Path) -> Path:
    root.mkdir(parents=True)
    return root


def _direct(backend: GatewayThread) -> np.ndarray:
    with triton.InferenceServerClient(backend.address) as client:
        return _logits(_infer(client))


def _router(front: GatewayThread) -> Router:
    router = front.gateway.router
    assert router is not None
    return router


def test_a_slow_primary_is_hedged_to_the_next_pool_and_the_loser_cancelled(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    gated = GatedRuntime()  # the slow pool: nothing it runs finishes until the gate opens
    slow = start_gateway(_repository(tmp_path / "slow"), gated)
    fast = start_gateway(_repository(tmp_path / "fast", hidden=16))
    front = start_gateway(
        _empty(tmp_path / "front"),
        pools=(f"slow=grpc://{slow.address}", f"fast=grpc://{fast.address}"),
        routes=("mlp=slow:1,fast;hedge=30ms",),  # slow is primary; fast hedges after 30 ms
    )
    router = _router(front)
    expected = _direct(fast)
    try:
        with triton.InferenceServerClient(front.address) as client:
            for _ in range(5):
                np.testing.assert_array_equal(_logits(_infer(client, timeout_s=5.0)), expected)
        assert (router.hedges.sent, router.hedges.won) == (5, 5)
        assert gated.gate.entered.is_set()  # each went to the slow pool first

        async def losers_cancelled() -> int:
            async with asyncio.timeout(10):
                await router.wait_idle(["slow"])
            return router.pools["slow"].stats().in_flight

        assert front.call(losers_cancelled) == 0
        assert router.pools["slow"].stats().requests == 5
    finally:
        gated.gate.opened.set()


def test_no_hedge_fires_when_the_primary_answers_in_time(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    first = start_gateway(_repository(tmp_path / "a"))
    second = start_gateway(_repository(tmp_path / "b", hidden=16))
    front = start_gateway(
        _empty(tmp_path / "front"),
        pools=(f"a=grpc://{first.address}", f"b=grpc://{second.address}"),
        routes=("mlp=a:1,b;hedge=5000ms",),
    )
    expected = _direct(first)
    with triton.InferenceServerClient(front.address) as client:
        for _ in range(20):
            np.testing.assert_array_equal(_logits(_infer(client)), expected)
    assert _router(front).hedges.sent == 0
    assert _router(front).pools["b"].stats().requests == 0


def test_a_canary_split_between_versions_is_within_two_points_of_its_weight(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    repository = _repository(tmp_path / "front", config=BOTH_VERSIONS)
    _repository(repository, hidden=16, version=2)
    front = start_gateway(repository, routes=("mlp=local@1:0.9,local@2:0.1",))
    requests = 5_000
    versions: Counter[str] = Counter()
    with triton.InferenceServerClient(front.address) as client:
        for _ in range(requests):
            versions[_infer(client).get_response().model_version] += 1
    assert set(versions) == {"1", "2"}
    assert abs(versions["2"] / requests - 0.1) <= 0.02, versions


def test_shadow_copies_never_change_the_primary_answer(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    primary = _repository(tmp_path / "front")
    candidate = start_gateway(_repository(tmp_path / "candidate", hidden=16))
    front = start_gateway(
        primary,
        pools=(f"candidate=grpc://{candidate.address}",),
        routes=("mlp=local;shadow=candidate",),
    )
    router = _router(front)
    expected = _direct(front)
    assert not np.array_equal(expected, _direct(candidate))  # the candidate answers otherwise
    front.call(router.settle_shadows)
    stats = router.shadow["candidate"]
    assert (stats.sent, stats.agreed, stats.failed) == (1, 0, 0)  # _direct(front)'s copy
    with triton.InferenceServerClient(front.address) as client:
        for _ in range(30):
            np.testing.assert_array_equal(_logits(_infer(client)), expected)
        front.call(router.settle_shadows)
        assert (stats.sent, stats.agreed, stats.failed) == (31, 0, 0)
        assert router.pools["candidate"].stats().requests == 31

        candidate.call(candidate.gateway.stop, 0.0)  # a shadow that dies changes nothing either
        for _ in range(10):
            np.testing.assert_array_equal(_logits(_infer(client)), expected)
        front.call(router.settle_shadows)
        assert stats.agreed == 0
        assert stats.sent - stats.failed == 31


# ------------------------------------------------------------------ zero-downtime version swap

V1_ONLY = 'name: "mlp"\nversion_policy: { specific { versions: [1] } }\n'


def _two_versions(root: Path) -> Path:
    _repository(root, config=V1_ONLY)
    return _repository(root, hidden=16, version=2)


@pytest.mark.parametrize("where", ["local", "remote"])
def test_a_version_swap_under_load_fails_no_request_and_moves_answers_to_v2(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path, where: str
) -> None:
    if where == "local":
        front = start_gateway(_two_versions(tmp_path / "front"), routes=("mlp=local",))
        serving = front
        pool = "local"
    else:
        serving = start_gateway(_two_versions(tmp_path / "backend"))
        front = start_gateway(
            _empty(tmp_path / "front"), pools=(f"b=grpc://{serving.address}",), routes=("mlp=b",)
        )
        pool = "b"
    expected = {"1": _direct(serving)}
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()
    answered = threading.Condition()

    def closed_loop() -> None:
        with triton.InferenceServerClient(front.address) as client:
            while not stop.is_set():
                try:
                    result = _infer(client)
                    version = result.get_response().model_version
                    if version == "1":
                        np.testing.assert_array_equal(_logits(result), expected["1"])
                except BaseException as exc:  # every failure is reported
                    errors.append(exc)
                    return
                with answered:
                    seen.append(version)
                    answered.notify_all()

    def wait_for(predicate: Callable[[], bool]) -> None:
        with answered:
            assert answered.wait_for(lambda: predicate() or bool(errors), 60)

    thread = threading.Thread(target=closed_loop)
    thread.start()
    try:
        wait_for(lambda: len(seen) >= 20)
        phases = [p["phase"] for p in swap(front.address, "mlp", f"{pool}@2", steps=4, step_s=0.1)]
        at_done = len(seen)
        wait_for(lambda: len(seen) >= at_done + 20)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not errors, errors[:3]
    assert phases == [
        "load",
        "ready",
        "shift",
        "shift",
        "shift",
        "shift",
        "drain",
        "unload",
        "done",
    ]
    assert seen[:20] == ["1"] * 20
    assert set(seen[at_done + 1 :]) == {"2"}  # at most the one in flight at "done" is older
    assert "1" in seen[20:at_done] or "2" in seen[20:at_done]
    with triton.InferenceServerClient(serving.address) as client:
        assert client.is_model_ready("mlp", "2")
        assert not client.is_model_ready("mlp", "1")
    router = _router(front)
    assert router.route("mlp") == Route("mlp", (pool,))  # the route as it was before


@pytest.mark.parametrize(
    ("model", "to", "steps", "code", "message"),
    [
        ("mlp", "local", 4, "INVALID_ARGUMENT", "expected --to POOL@VERSION"),
        ("mlp", "local@two", 4, "INVALID_ARGUMENT", "version 'two' is not a version number"),
        ("mlp", "local@2", 0, "INVALID_ARGUMENT", "steps must be 1 to 100, got 0"),
        ("mlp", "nowhere@2", 4, "INVALID_ARGUMENT", "no pool named 'nowhere'"),
        ("ghost", "local@2", 4, "UNAVAILABLE", "pool 'local' does not serve 'ghost' now"),
        ("mlp", "local@7", 4, "INTERNAL", "pool 'local' has no version 7 of 'mlp' to load"),
    ],
)
def test_a_swap_that_cannot_run_says_why_and_leaves_the_route_alone(
    start_gateway: Callable[..., GatewayThread],
    tmp_path: Path,
    *,
    model: str,
    to: str,
    steps: int,
    code: str,
    message: str,
) -> None:
    front = start_gateway(_two_versions(tmp_path / "front"), routes=("mlp=local",))
    with pytest.raises(grpc.RpcError) as raised:
        list(swap(front.address, model, to, steps=steps, step_s=0))
    assert raised.value.code().name == code
    assert message in (raised.value.details() or "")
    assert _router(front).route("mlp") == Route("mlp", ("local",))
    with triton.InferenceServerClient(front.address) as client:
        assert _infer(client).get_response().model_version == "1"


def test_a_swap_needs_the_router(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    front = start_gateway(_two_versions(tmp_path / "front"))  # no pool, no route: no router
    with pytest.raises(grpc.RpcError) as raised:
        list(swap(front.address, "mlp", "local@2"))
    assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "start it with a --route for the model" in (raised.value.details() or "")


def test_the_swap_command_reports_each_phase_and_exits_non_zero_on_refusal(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    front = start_gateway(_two_versions(tmp_path / "front"), routes=("mlp=b", "other=local"))
    command = [sys.executable, "-m", "edgefabric.cli", "gateway", "swap", "--gateway"]
    refused = subprocess.run(
        [*command, front.address, "mlp", "--to", "local@2"],
        check=False,
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0
    assert "INVALID_ARGUMENT: swap of 'mlp': its route does not send to pool 'local'" in (
        refused.stderr
    )
    _router(front).set_route("mlp", Route("mlp", ("local",)))
    done = subprocess.run(
        [*command, front.address, "mlp", "--to", "local@2", "--steps", "2", "--step-s", "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert [line.split()[0] for line in done.stdout.splitlines()] == [
        "load", "ready", "shift", "shift", "drain", "unload", "done"
    ]  # fmt: skip
    assert "50%" in done.stdout.splitlines()[2]
