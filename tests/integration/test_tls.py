"""TLS and mutual TLS on the gateway's and the edge agent's gRPC listeners, with tritonclient."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from edge_agent.serving import DeviceServer, ServingOptions
from edgefabric.runtime.onnx import OrtOptions
from edgefabric.samples import write_sample_repository
from edgefabric.security.tls import ServerTls
from tests.tls_certs import Issued, ThrowawayCA

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("pki")
    ca, rogue = ThrowawayCA(root / "ca"), ThrowawayCA(root / "rogue", name="someone else's CA")
    return {
        "ca": ca,
        "server": ca.issue("gateway", server=True),
        "client": ca.issue("app-1", server=False),
        "rogue_client": rogue.issue("intruder", server=False),
    }


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_repository(tmp_path_factory.mktemp("repo"))


def _client(
    address: str, ca: ThrowawayCA, client: Issued | None = None
) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(
        address,
        ssl=True,
        root_certificates=str(ca.cert),
        private_key=str(client.key) if client else None,
        certificate_chain=str(client.cert) if client else None,
    )


def _infer(client: triton.InferenceServerClient) -> np.ndarray:
    x = np.ones((2, 16), dtype=np.float32)
    tensor = triton.InferInput("x", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    result: np.ndarray = client.infer("mlp", [tensor]).as_numpy("logits")
    return result


def test_tls_serves_clients_that_trust_the_ca(start_gateway, repository, pki) -> None:
    server: Issued = pki["server"]
    running = start_gateway(repository, tls_cert=server.cert, tls_key=server.key)
    with _client(running.address, pki["ca"]) as client:
        assert client.is_server_live()
        assert _infer(client).shape == (2, 8)
    with (
        triton.InferenceServerClient(running.address) as plaintext,
        pytest.raises(InferenceServerException),
    ):
        plaintext.is_server_live()


def test_tls_is_refused_by_clients_that_trust_another_ca(start_gateway, repository, pki, tmp_path):
    server: Issued = pki["server"]
    running = start_gateway(repository, tls_cert=server.cert, tls_key=server.key)
    other = ThrowawayCA(tmp_path / "other")
    with _client(running.address, other) as client, pytest.raises(InferenceServerException):
        client.is_server_live()


def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(
    start_gateway, repository, pki
) -> None:
    server: Issued = pki["server"]
    ca: ThrowawayCA = pki["ca"]
    running = start_gateway(
        repository, tls_cert=server.cert, tls_key=server.key, tls_client_ca=ca.cert
    )
    with _client(running.address, ca, pki["client"]) as client:
        assert _infer(client).shape == (2, 8)
    with _client(running.address, ca) as anonymous, pytest.raises(InferenceServerException):
        anonymous.is_server_live()
    rogue: Issued = pki["rogue_client"]
    with _client(running.address, ca, rogue) as intruder, pytest.raises(InferenceServerException):
        intruder.is_server_live()


def test_optional_client_certificates_admit_clients_without_one(
    start_gateway, repository, pki
) -> None:
    server: Issued = pki["server"]
    ca: ThrowawayCA = pki["ca"]
    running = start_gateway(
        repository,
        tls_cert=server.cert,
        tls_key=server.key,
        tls_client_ca=ca.cert,
        tls_client_auth="optional",
    )
    with _client(running.address, ca) as client:
        assert client.is_server_live()


def test_the_edge_agents_local_server_speaks_mutual_tls(pki, tmp_path) -> None:
    server: Issued = pki["server"]
    ca: ThrowawayCA = pki["ca"]
    tls = ServerTls.from_files(server.cert, server.key, ca.cert)
    device = DeviceServer(
        tmp_path / "serving", ServingOptions(ort=OrtOptions(intra_op_threads=1), tls=tls)
    )

    async def scenario() -> tuple[bool, bool]:
        await device.start()
        try:
            address = f"127.0.0.1:{device.port}"

            def check(client: Issued | None) -> bool:
                with _client(address, ca, client) as c:
                    try:
                        return bool(c.is_server_live())
                    except InferenceServerException:
                        return False

            with_cert = await asyncio.to_thread(check, pki["client"])
            without = await asyncio.to_thread(check, None)
            return with_cert, without
        finally:
            await device.stop(0.1)

    assert asyncio.run(scenario()) == (True, False)


def test_plaintext_off_loopback_is_refused_before_binding(tmp_path) -> None:
    device = DeviceServer(tmp_path / "serving", ServingOptions(address="0.0.0.0"))
    with pytest.raises(ValueError, match=r"refusing to serve plaintext gRPC on '0.0.0.0'"):
        asyncio.run(device.start())
