"""Structured JSON logs: the correlation id an INTERNAL error returns is a field of its log line,
and ``edgefabric --log-format json`` makes every server command log one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from tritonclient.grpc import service_pb2_grpc

from edgefabric.telemetry.logs import JsonFormatter
from tests.conftest import GatewayThread
from tests.integration.gated import GatedRuntime
from tests.integration.test_gateway_errors import mlp_request

pytestmark = pytest.mark.integration


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the root logger writes, one JSON object per line."""
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield sink
    finally:
        root.removeHandler(handler)


def test_internal_error_correlation_id_is_a_field_of_the_json_log_line(
    start_gateway: Callable[..., GatewayThread], sample_repository: Path, json_log: io.StringIO
) -> None:
    runtime = GatedRuntime()
    runtime.gate.fail_with = RuntimeError("secret detail")
    runtime.gate.opened.set()
    running = start_gateway(sample_repository, runtime=runtime)
    with grpc.insecure_channel(running.address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(mlp_request(), timeout=10)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    returned = str(raised.value.details()).rsplit(" ", 1)[-1]
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    [entry] = [line for line in lines if line.get("correlation_id") == returned]
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "edgefabric.kserve.servicer"
    assert returned in entry["message"]
    assert "secret detail" in entry["exception"]  # details in the log only
    assert {"timestamp", "level", "logger", "message"} <= entry.keys()


def _gateway_serve(repository: Path, *flags: str, env: dict[str, str] | None = None):
    command = [sys.executable, "-m", "edgefabric.cli", *flags, "gateway", "serve"]
    command += ["--model-repository", str(repository), "--grpc-port", "0", "--metrics-port", "-1"]
    return subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    ("flags", "env"),
    [(("--log-format", "json"), {}), ((), {"EDGEFABRIC_LOG_FORMAT": "json"})],
    ids=["flag", "env"],
)
def test_gateway_serve_logs_json_lines(
    sample_repository: Path, flags: tuple[str, ...], env: dict[str, str]
) -> None:
    process = _gateway_serve(sample_repository, *flags, env=env)
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        assert "listening" in process.stdout.readline()  # printed once it serves
        process.terminate()
        _, errors = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    entries = [json.loads(line) for line in errors.splitlines() if line.strip()]
    assert any("listening" in e["message"] and e["level"] == "INFO" for e in entries)
    assert all(e["logger"] and e["timestamp"].endswith("+00:00") for e in entries)


def test_an_unknown_log_format_is_refused_with_the_choices(sample_repository: Path) -> None:
    process = _gateway_serve(sample_repository, env={"EDGEFABRIC_LOG_FORMAT": "xml"})
    _, errors = process.communicate(timeout=30)
    assert process.returncode != 0
    assert "log format 'xml' is not one of text, json" in errors
    assert "EDGEFABRIC_LOG_FORMAT" in errors
