"""Per-tenant rate limits, concurrency quotas and the deadline cap, on a real gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb

from edgefabric.samples import write_sample_repository
from edgefabric.security.limits import TenantLimits
from edgefabric.security.tokens import Role, TokenStore
from tests.integration.gated import GatedRuntime
from tests.integration.test_gateway_batching import batched_repository

pytestmark = pytest.mark.integration

INFER = "/inference.GRPCInferenceService/ModelInfer"


def mlp_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.ones((1, 16), dtype=np.float32).tobytes())
    return request


def tokens(home: Path, limits: dict[str, TenantLimits]) -> dict[str, str]:
    store = TokenStore.in_home(home)
    for tenant, tenant_limits in limits.items():
        store.set_limits(tenant, tenant_limits)
    return {t: store.create(Role.INFER, ["*"], t)[0] for t in ("acme", "beta")}


def call(channel: grpc.aio.Channel, token: str, timeout: float = 30.0) -> asyncio.Future:
    stub = channel.unary_unary(
        INFER,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    return asyncio.ensure_future(
        stub(mlp_request(), metadata=(("authorization", f"Bearer {token}"),), timeout=timeout)
    )


def trailer(error: grpc.aio.AioRpcError) -> dict[str, str]:
    return dict(error.trailing_metadata() or ())  # type: ignore[arg-type]


def test_a_tenant_over_its_rate_is_shed_with_retry_after_and_others_are_not(
    start_gateway, tmp_path
) -> None:
    home = tmp_path / "home"
    token = tokens(home, {"acme": TenantLimits(rate_per_s=0.01, burst=2)})
    repository = write_sample_repository(tmp_path / "repo")
    running = start_gateway(repository, auth="required", home=home)

    async def scenario() -> tuple[list[object], list[object]]:
        async with grpc.aio.insecure_channel(running.address) as channel:
            acme = [await asyncio.gather(call(channel, token["acme"]), return_exceptions=True)]
            acme += [await asyncio.gather(call(channel, token["acme"]), return_exceptions=True)]
            acme += [await asyncio.gather(call(channel, token["acme"]), return_exceptions=True)]
            beta = await asyncio.gather(*(call(channel, token["beta"]) for _ in range(5)))
            return [a[0] for a in acme], list(beta)

    acme, beta = asyncio.run(scenario())
    assert all(isinstance(a, pb.ModelInferResponse) for a in acme[:2])
    shed = acme[2]
    assert isinstance(shed, grpc.aio.AioRpcError)
    assert shed.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tenant 'acme' is over its rate limit" in (shed.details() or "")
    assert int(trailer(shed)["retry-after-ms"]) > 1000  # the next token is ~100 s away
    assert all(isinstance(b, pb.ModelInferResponse) for b in beta)


def test_a_tenant_at_its_concurrency_quota_is_shed_while_others_get_in(
    start_gateway, tmp_path
) -> None:
    home = tmp_path / "home"
    token = tokens(home, {"acme": TenantLimits(max_concurrent=1)})
    runtime = GatedRuntime()
    repository = write_sample_repository(tmp_path / "repo")
    running = start_gateway(repository, runtime=runtime, auth="required", home=home)

    async def scenario() -> tuple[object, object, list[object]]:
        async with grpc.aio.insecure_channel(running.address) as channel:
            held = call(channel, token["acme"])
            await asyncio.to_thread(runtime.gate.wait_entered)
            second = await asyncio.gather(call(channel, token["acme"]), return_exceptions=True)
            beta = call(channel, token["beta"])  # admitted: it waits at the gate, not shed
            runtime.gate.opened.set()
            rest = await asyncio.gather(held, beta, return_exceptions=True)
            return second[0], rest[0], [rest[1]]

    second, first, beta = asyncio.run(scenario())
    assert isinstance(second, grpc.aio.AioRpcError)
    assert second.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "quota is 1" in (second.details() or "")
    assert int(trailer(second)["retry-after-ms"]) >= 1
    assert isinstance(first, pb.ModelInferResponse)
    assert isinstance(beta[0], pb.ModelInferResponse)


def test_deadlines_are_capped_at_the_configured_maximum(start_gateway, tmp_path) -> None:
    runtime = GatedRuntime()
    repository = batched_repository(tmp_path / "repo", delay_us=0)
    running = start_gateway(repository, runtime=runtime, max_deadline_s=0.2)
    request = mlp_request()
    request.model_name = "batched"

    async def scenario() -> list[object]:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = channel.unary_unary(
                INFER,
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            held = asyncio.ensure_future(stub(request, timeout=60))  # occupies the instance
            await asyncio.to_thread(runtime.gate.wait_entered)
            try:
                # The client allows 60 s; queued behind the held one, it gets 0.2 s of it.
                queued = await asyncio.gather(stub(request, timeout=60), return_exceptions=True)
            finally:
                runtime.gate.opened.set()
            return [*queued, await held]

    queued, held = asyncio.run(scenario())
    assert isinstance(queued, grpc.aio.AioRpcError)
    assert queued.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(held, pb.ModelInferResponse)


def test_a_refused_call_is_not_decoded_or_logged_and_a_malformed_one_is_invalid(
    start_gateway, tmp_path, caplog
) -> None:
    home = tmp_path / "home"
    token = tokens(home, {"acme": TenantLimits(rate_per_s=0.01, burst=1)})
    repository = write_sample_repository(tmp_path / "repo")
    running = start_gateway(repository, auth="required", home=home)
    not_protobuf = b"\xff\xff\xff not a ModelInferRequest"

    async def scenario() -> list[BaseException | bytes]:
        async with grpc.aio.insecure_channel(running.address) as channel:
            raw = channel.unary_unary(INFER, None, None)  # bytes in, bytes out
            outcomes = []
            for tenant in ("acme", "acme", "beta"):  # acme's one token, acme refused, beta
                metadata = (("authorization", f"Bearer {token[tenant]}"),)
                answer = await asyncio.gather(
                    raw(not_protobuf, metadata=metadata, timeout=30), return_exceptions=True
                )
                outcomes.append(answer[0])
            return outcomes

    with caplog.at_level("INFO"):
        first, refused, other = asyncio.run(scenario())
    for malformed in (first, other):  # admitted, then found not to be a message
        assert isinstance(malformed, grpc.aio.AioRpcError)
        assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid inference.ModelInferRequest" in (malformed.details() or "")
    # Over its limit, the same bytes are refused for the rate before anyone parses them.
    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over its rate limit" in (refused.details() or "")
    assert int(trailer(refused)["retry-after-ms"]) >= 1
    assert not [r for r in caplog.records if "rate limit" in r.getMessage()]
