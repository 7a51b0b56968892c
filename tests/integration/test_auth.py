"""Bearer tokens on the gateway, through tritonclient: who gets in, and what they may do."""

from __future__ import annotations

import json
import queue
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from edgefabric.security.tokens import Role, TokenStore
from model_store.audit import AuditLog
from tests.cli import run_edgefabric

pytestmark = pytest.mark.integration


class Tokens:
    """One home's tokens, by purpose."""

    def __init__(self, home: Path) -> None:
        store = TokenStore.in_home(home)
        self.admin, _ = store.create(Role.ADMIN, [], "ops")
        self.mlp_only, _ = store.create(Role.INFER, ["mlp*"], "acme")
        self.everything, _ = store.create(Role.INFER, ["*"], "beta")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


def mlp_input() -> list[triton.InferInput]:
    tensor = triton.InferInput("x", [1, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
    return [tensor]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def secured(start_gateway, writable_repository, home):
    tokens = Tokens(home)
    running = start_gateway(writable_repository, auth="required", home=home)
    with triton.InferenceServerClient(running.address) as client:
        yield client, tokens, running


def test_health_and_liveness_stay_open(secured) -> None:
    client, _, running = secured
    assert client.is_server_live()
    assert client.is_server_ready()
    with grpc.insecure_channel(running.address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "requires a token"),
        ({"authorization": "Basic b3BzOm9wcw=="}, "must be 'Bearer <token>'"),
        (bearer("eft_0123456789ab_" + "x" * 43), "unknown or revoked"),
    ],
)
def test_calls_without_a_valid_token_are_unauthenticated(secured, headers, message) -> None:
    client, _, _ = secured
    with pytest.raises(InferenceServerException, match=message) as refused:
        client.infer("mlp", mlp_input(), headers=headers)
    assert status(refused) == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as refused:
        client.get_server_metadata(headers=headers)
    assert status(refused) == "StatusCode.UNAUTHENTICATED"


def test_an_infer_token_reaches_only_its_models(secured) -> None:
    client, tokens, _ = secured
    headers = bearer(tokens.mlp_only)
    assert client.infer("mlp", mlp_input(), headers=headers).as_numpy("logits").shape == (1, 8)
    assert client.is_model_ready("mlp", headers=headers)
    for call in (
        lambda: client.get_model_metadata("cnn", headers=headers),
        lambda: client.get_model_config("cnn", headers=headers),
        lambda: client.is_model_ready("cnn", headers=headers),
        lambda: client.get_inference_statistics("cnn", headers=headers),
    ):
        with pytest.raises(InferenceServerException, match=r"may not use model 'cnn'") as denied:
            call()
        assert status(denied) == "StatusCode.PERMISSION_DENIED"
    index = client.get_model_repository_index(headers=headers)
    assert {model.name for model in index.models} == {"mlp"}
    stats = client.get_inference_statistics(headers=headers)
    assert {row.name for row in stats.model_stats} == {"mlp"}
    everything = client.get_model_repository_index(headers=bearer(tokens.everything))
    assert {"mlp", "cnn", "text", "stats"} <= {model.name for model in everything.models}


def test_a_stream_reports_a_forbidden_model_in_band_and_goes_on(secured) -> None:
    client, tokens, _ = secured
    answers: queue.Queue[tuple[object, object]] = queue.Queue()
    client.start_stream(
        lambda result, error: answers.put((result, error)), headers=bearer(tokens.mlp_only)
    )
    try:
        client.async_stream_infer("cnn", [_cnn_input()], request_id="denied")
        client.async_stream_infer("mlp", mlp_input(), request_id="allowed")
        outcomes = [answers.get(timeout=30) for _ in range(2)]
    finally:
        client.stop_stream()
    errors = [str(error) for _, error in outcomes if error is not None]
    results = [result for result, error in outcomes if error is None]
    assert len(errors) == 1
    assert "may not use model 'cnn'" in errors[0]
    assert [r.get_response().id for r in results] == ["allowed"]  # type: ignore[attr-defined]


def _cnn_input() -> triton.InferInput:
    tensor = triton.InferInput("image", [1, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 3, 32, 32), dtype=np.float32))
    return tensor


def test_repository_load_and_unload_need_the_admin_role(secured) -> None:
    client, tokens, _ = secured
    with pytest.raises(InferenceServerException, match=r"needs the admin role") as denied:
        client.unload_model("mlp", headers=bearer(tokens.everything))
    assert status(denied) == "StatusCode.PERMISSION_DENIED"
    assert client.is_model_ready("mlp", headers=bearer(tokens.everything))
    client.unload_model("mlp", headers=bearer(tokens.admin))
    assert not client.is_model_ready("mlp", headers=bearer(tokens.admin))
    client.load_model("mlp", headers=bearer(tokens.admin))
    assert client.is_model_ready("mlp", headers=bearer(tokens.admin))


def test_token_cli_creates_once_revokes_and_audits(start_gateway, writable_repository, home):
    running = start_gateway(writable_repository, auth="required", home=home)
    created = run_edgefabric(home, "token", "create", "--role", "admin", "--tenant", "ops")
    token = created.strip()
    assert token.startswith("eft_")
    assert created.count("\n") == 1
    listing = run_edgefabric(home, "token", "list")
    token_id = token.split("_")[1]
    assert token_id in listing
    assert token.split("_", 2)[2] not in listing
    with triton.InferenceServerClient(running.address) as client:
        client.unload_model("stats", headers=bearer(token))
        client.load_model("stats", headers=bearer(token))
        run_edgefabric(home, "token", "revoke", token_id)
        with pytest.raises(InferenceServerException, match=r"unknown or revoked") as refused:
            client.get_server_metadata(headers=bearer(token))
        assert status(refused) == "StatusCode.UNAUTHENTICATED"
    entries = [(e.action, e.subject, e.actor) for e in AuditLog(home / "audit.log").entries()]
    actor = f"token:{token_id}@ops"
    assert [(a, s) for a, s, _ in entries] == [
        ("token.create", token_id),
        ("gateway.model.unload", "stats"),
        ("gateway.model.load", "stats"),
        ("token.revoke", token_id),
    ]
    assert [who for _, _, who in entries[1:3]] == [actor, actor]
    assert "audit log intact: 4 entries" in run_edgefabric(home, "audit", "verify")


def test_token_cli_refuses_bad_requests_with_a_reason(home) -> None:
    import subprocess  # noqa: PLC0415

    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_edgefabric(home, "token", "create", "--role", "infer", "--tenant", "acme")
    assert "needs the models it may use" in (failed.value.stderr or "")
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_edgefabric(home, "token", "revoke", "000000000000")
    assert "no token store here; create a token first" in (failed.value.stderr or "")


def test_anonymous_gateway_with_a_home_audits_admin_actions(
    start_gateway, writable_repository, home
) -> None:
    running = start_gateway(writable_repository, home=home)
    with triton.InferenceServerClient(running.address) as client:
        client.unload_model("text")
    entries = AuditLog(home / "audit.log").entries()
    assert [(e.action, e.subject, e.actor) for e in entries] == [
        ("gateway.model.unload", "text", "gateway:anonymous")
    ]
    assert json.loads(json.dumps(entries[0].details)) == {}
    assert "audit log intact: 1 entries" in run_edgefabric(home, "audit", "verify")
