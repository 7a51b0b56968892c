"""TLS configuration: PEM checks, loopback detection, and refusing plaintext on the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edge_agent.settings import AgentSettings
from edgefabric.security.tls import ServerTls, check_exposure, client_credentials, is_loopback
from gateway.settings import GatewaySettings
from tests.tls_certs import ThrowawayCA

pytestmark = pytest.mark.unit


def settings(**values: Any) -> GatewaySettings:
    return GatewaySettings(**values)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return ThrowawayCA(tmp_path_factory.mktemp("pki"))


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.7", False),
        ("gateway.internal", False),
    ],
)
def test_loopback_addresses(address: str, loopback: bool) -> None:
    assert is_loopback(address) is loopback


def test_plaintext_on_the_network_is_refused_unless_chosen() -> None:
    check_exposure("127.0.0.1", tls=False, insecure=False)
    check_exposure("0.0.0.0", tls=True, insecure=False)
    check_exposure("0.0.0.0", tls=False, insecure=True)
    with pytest.raises(ValueError, match=r"plaintext gRPC on '0\.0\.0\.0'.*--insecure"):
        check_exposure("0.0.0.0", tls=False, insecure=False)


def test_mutual_tls_follows_the_client_ca(ca: ThrowawayCA) -> None:
    server = ca.issue("server-a", server=True)
    assert not ServerTls.from_files(server.cert, server.key).mutual
    assert ServerTls.from_files(server.cert, server.key, ca.cert).mutual
    optional = ServerTls.from_files(server.cert, server.key, ca.cert, require_client_cert=False)
    assert not optional.mutual


def test_requiring_client_certs_without_a_ca_is_refused(ca: ThrowawayCA) -> None:
    server = ca.issue("server-b", server=True)
    with pytest.raises(ValueError, match=r"needs a client CA.*--tls-client-ca"):
        ServerTls.from_files(server.cert, server.key, require_client_cert=True)


def test_a_key_that_is_not_the_certificates_is_refused(ca: ThrowawayCA) -> None:
    one, other = ca.issue("server-c", server=True), ca.issue("server-d", server=True)
    with pytest.raises(ValueError, match=r"does not belong to certificate.*server-c"):
        ServerTls.from_files(one.cert, other.key)


def test_a_key_given_as_the_certificate_is_refused(ca: ThrowawayCA) -> None:
    server = ca.issue("server-e", server=True)
    with pytest.raises(ValueError, match=r"expected PEM certificates.*not the key"):
        ServerTls.from_files(server.key, server.key)
    with pytest.raises(ValueError, match=r"client CA.*expected PEM certificates"):
        ServerTls.from_files(server.cert, server.key, server.key)


def test_missing_and_garbage_key_files_are_named(ca: ThrowawayCA, tmp_path: Path) -> None:
    server = ca.issue("server-f", server=True)
    with pytest.raises(ValueError, match=r"TLS key .*nope\.key: no such file"):
        ServerTls.from_files(server.cert, tmp_path / "nope.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_text("not a key")
    with pytest.raises(ValueError, match=r"expected an unencrypted PEM private key"):
        ServerTls.from_files(server.cert, garbage)


def test_client_credentials_need_cert_and_key_together(ca: ThrowawayCA) -> None:
    client = ca.issue("client-a", server=False)
    assert client_credentials(ca.cert, client.cert, client.key) is not None
    with pytest.raises(ValueError, match=r"give both"):
        client_credentials(ca.cert, client.cert, None)


def test_gateway_settings_refuse_plaintext_and_anonymous_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"plaintext gRPC.*--insecure"):
        settings(model_repository=tmp_path, grpc_address="0.0.0.0")
    with pytest.raises(ValidationError, match=r"without authentication.*--auth required"):
        settings(model_repository=tmp_path, grpc_address="0.0.0.0", insecure=True)
    chosen = settings(
        model_repository=tmp_path, grpc_address="0.0.0.0", insecure=True, allow_anonymous=True
    )
    assert chosen.server_tls() is None
    secured = settings(
        model_repository=tmp_path, grpc_address="0.0.0.0", insecure=True, auth="required"
    )
    assert secured.auth == "required"


def test_gateway_settings_check_tls_files_when_loading(ca: ThrowawayCA, tmp_path: Path) -> None:
    server = ca.issue("server-g", server=True)
    with pytest.raises(ValidationError, match=r"both tls_cert and tls_key"):
        settings(model_repository=tmp_path, tls_cert=server.cert)
    with pytest.raises(ValidationError, match=r"tls_client_ca .*needs tls_cert"):
        settings(model_repository=tmp_path, tls_client_ca=ca.cert)
    with pytest.raises(ValidationError, match=r"does not belong"):
        settings(model_repository=tmp_path, tls_cert=server.cert, tls_key=ca.files.key)
    configured = settings(
        model_repository=tmp_path,
        grpc_address="0.0.0.0",
        auth="required",
        tls_cert=server.cert,
        tls_key=server.key,
        tls_client_ca=ca.cert,
    )
    tls = configured.server_tls()
    assert tls is not None
    assert tls.mutual


def test_agent_settings_refuse_plaintext_off_loopback(ca: ThrowawayCA, tmp_path: Path) -> None:
    root = tmp_path / "root.json"
    root.write_text("{}")
    base: dict[str, Any] = {
        "device_id": "cam-1",
        "broker": "mqtt://127.0.0.1:1883",
        "trust_root": root,
        "data_dir": tmp_path,
        "allow_unsigned_desired": True,
        "grpc_address": "0.0.0.0",
    }
    with pytest.raises(ValidationError, match=r"plaintext gRPC on '0\.0\.0\.0'"):
        AgentSettings(**base)
    assert AgentSettings(**base, insecure=True).server_tls() is None
    server = ca.issue("device", server=True)
    tls = AgentSettings(**base, tls_cert=server.cert, tls_key=server.key).server_tls()
    assert tls is not None
    assert not tls.mutual
