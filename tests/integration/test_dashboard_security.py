"""The dashboard behind admin bearer tokens and TLS: ``store serve --auth required --tls-cert``.

A real store serves on a real mosquitto, in-process and as ``edgefabric store serve``; the
client is urllib with an ``ssl`` context that trusts a throwaway CA (tests/tls_certs.py).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefabric.cli import build_parser
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress
from edgefabric.security.tls import https_context
from edgefabric.security.tokens import Role, TokenStore
from model_store.dashboard import DashboardData, DashboardServer
from model_store.home import StoreHome
from model_store.serve import StoreServer, StoreServerOptions
from model_store.store import ModelStore
from tests.cli import run_edgefabric
from tests.tls_certs import Issued, ThrowawayCA

pytestmark = pytest.mark.integration


@dataclass
class Secured:
    home: Path
    broker: PrivateBroker
    ca: ThrowawayCA
    server_cert: Issued
    server: StoreServer
    admin: str
    infer: str

    @property
    def url(self) -> str:
        assert self.server.dashboard is not None
        return self.server.dashboard.url


def trusting(ca: ThrowawayCA, client: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


def get(url: str, context: ssl.SSLContext | None, token: str | None = None) -> Any:
    """The JSON answer; ``HTTPError`` for 4xx and 5xx."""
    assert url.startswith(("https://127.0.0.1:", "http://127.0.0.1:"))
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
        return json.load(response)


def refused(url: str, context: ssl.SSLContext, token: str | None = None) -> tuple[int, Any, Any]:
    with pytest.raises(urllib.error.HTTPError) as caught:
        get(url, context, token)
    error = caught.value
    body = json.loads(error.read())
    error.close()
    return error.code, body, error.headers


def _home(root: Path) -> Path:
    home = root / "home"
    run_edgefabric(home, "keys", "init")
    return home


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A store serving its dashboard over HTTPS with ``auth required``, an admin and an infer
    token in its home."""
    root = tmp_path_factory.mktemp("dashboard-security")
    home = _home(root)
    tokens = TokenStore.in_home(home)
    admin, _ = tokens.create(Role.ADMIN, (), "ops")
    infer, _ = tokens.create(Role.INFER, ("*",), "acme")
    ca = ThrowawayCA(root / "ca")
    server_cert = ca.issue("store", server=True)
    with PrivateBroker(root / "mosquitto") as broker:
        store = ModelStore(StoreHome(home))
        options = StoreServerOptions(
            broker=BrokerAddress.parse(broker.url),
            client_id="store",
            http_port=0,
            http_auth="required",
            http_tls_cert=server_cert.cert,
            http_tls_key=server_cert.key,
        )
        server = StoreServer(store, options)
        server.start()
        try:
            yield Secured(home, broker, ca, server_cert, server, admin, infer)
        finally:
            server.stop()
            store.close()


def test_the_dashboard_speaks_https_with_the_given_certificate(secured: Secured) -> None:
    assert secured.url.startswith("https://127.0.0.1:")
    with urllib.request.urlopen(secured.url, timeout=10, context=trusting(secured.ca)) as page:  # noqa: S310
        assert page.status == 200
        assert b"/static/dashboard.js" in page.read()  # the page holds no data: served to all
    assert get(secured.url + "api/devices", trusting(secured.ca), secured.admin)["total"] == 0


def test_a_client_that_does_not_trust_the_certificate_is_refused(
    secured: Secured, tmp_path: Path
) -> None:
    stranger = trusting(ThrowawayCA(tmp_path / "other", name="another CA"))
    with pytest.raises(urllib.error.URLError) as caught:
        get(secured.url + "api/devices", stranger, secured.admin)
    assert isinstance(caught.value.reason, ssl.SSLCertVerificationError)


def test_plain_http_on_the_https_port_gets_no_answer(secured: Secured) -> None:
    plain = secured.url.replace("https://", "http://")
    with pytest.raises(
        (http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine)
    ):
        get(plain + "api/devices", None, secured.admin)
    # the failed handshake cost that connection only
    assert get(secured.url + "api/models", trusting(secured.ca), secured.admin)["models"] == []


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (None, "requires a token"),
        ("not-a-token", "malformed"),
        ("eft_000000000000_" + "A" * 43, "unknown or revoked"),
    ],
)
def test_the_api_without_a_valid_token_is_401(
    secured: Secured, token: str | None, expected: str
) -> None:
    for path in ("api/devices", "api/rollouts", "api/metrics", "api/events", "api/models"):
        status, body, headers = refused(secured.url + path, trusting(secured.ca), token)
        assert status == 401
        assert expected in body["error"]
        assert headers["WWW-Authenticate"] == 'Bearer realm="edgefabric"'


def test_a_valid_token_without_the_admin_role_is_403(secured: Secured) -> None:
    status, body, headers = refused(
        secured.url + "api/devices", trusting(secured.ca), secured.infer
    )
    assert status == 403
    assert "needs the admin role" in body["error"]
    assert "infer role" in body["error"]
    assert "--role admin" in body["error"]
    assert "WWW-Authenticate" not in headers


def test_a_revoked_admin_token_is_refused_on_the_next_request(secured: Secured) -> None:
    tokens = TokenStore.in_home(secured.home)
    token, info = tokens.create(Role.ADMIN, (), "ops")
    assert get(secured.url + "api/events", trusting(secured.ca), token)["events"] is not None
    tokens.revoke(info.token_id)
    status, body, _ = refused(secured.url + "api/events", trusting(secured.ca), token)
    assert (status, f"token {info.token_id} is unknown or revoked") == (
        401,
        body["error"].removeprefix("not authorised: ").split(";")[0],
    )


def test_mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca(
    secured: Secured, tmp_path: Path
) -> None:
    clients = ThrowawayCA(tmp_path / "clients", name="dashboard users")
    alice = clients.issue("alice", server=False)
    intruder = ThrowawayCA(tmp_path / "rogue", name="rogue CA").issue("mallory", server=False)
    context = https_context(secured.server_cert.cert, secured.server_cert.key, clients.cert)
    data = DashboardData(StoreHome(secured.home), secured.server.fleet, secured.server.history)
    with DashboardServer(data, tls=context) as dashboard:
        url = dashboard.url + "api/models"
        assert get(url, trusting(secured.ca, alice))["models"] == []
        for client in (None, intruder):
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionResetError)):
                get(url, trusting(secured.ca, client))


# -- the command line: refusals before anything listens ----------------------------------------


def _serve_in_process(home: Path, *flags: str) -> int:
    args = build_parser().parse_args(
        ["store", "serve", "--home", str(home), "--broker", "mqtt://127.0.0.1:1", *flags]
    )
    return int(args.handler(args))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            ["--http-address", "0.0.0.0"],
            "refusing to serve the fleet dashboard without authentication on '0.0.0.0'",
        ),
        (
            ["--http-address", "0.0.0.0", "--auth", "required"],
            "refusing to take bearer tokens in plaintext on '0.0.0.0'",
        ),
        (["--tls-cert", "cert.pem"], "needs both --tls-cert FILE and --tls-key FILE"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "missing.crt", "--tls-key", "missing.key"], "missing.crt: no such file"),
    ],
)
def test_store_serve_refuses_an_exposed_or_misconfigured_dashboard(
    secured: Secured,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: str,
) -> None:
    flags = [str(tmp_path / f) if f.endswith((".pem", ".crt", ".key")) else f for f in flags]
    assert _serve_in_process(secured.home, "--http-port", "0", *flags) == 2
    stderr = capsys.readouterr().err
    assert expected in stderr
    assert "Traceback" not in stderr


def test_store_serve_names_a_key_given_as_the_certificate(
    secured: Secured, capsys: pytest.CaptureFixture[str]
) -> None:
    key = str(secured.server_cert.key)
    code = _serve_in_process(secured.home, "--http-port", "0", "--tls-cert", key, "--tls-key", key)
    assert code == 2
    assert "expected PEM certificates" in capsys.readouterr().err


def test_insecure_allows_a_network_address_explicitly() -> None:
    options = StoreServerOptions(
        broker=BrokerAddress.parse("mqtt://127.0.0.1:1883"),
        http_port=0,
        http_address="0.0.0.0",
        http_insecure=True,
    )
    assert options.http_auth == "none"


def test_store_serve_process_serves_the_secured_dashboard(secured: Secured) -> None:
    """The flags end to end: ``edgefabric store serve --auth required --tls-cert --tls-key``."""
    env = {**os.environ, "EDGEFABRIC_HOME": str(secured.home)}
    command = [sys.executable, "-m", "edgefabric.cli", "store", "serve"]
    flags = ["--broker", secured.broker.url, "--client-id", "store-2", "--http-port", "0"]
    tls = ["--tls-cert", str(secured.server_cert.cert), "--tls-key", str(secured.server_cert.key)]
    with subprocess.Popen(
        [*command, *flags, "--auth", "required", *tls], env=env, stdout=subprocess.PIPE, text=True
    ) as process:
        try:
            assert process.stdout is not None
            assert "serving the repository" in process.stdout.readline()
            line = process.stdout.readline()
            found = re.search(r"dashboard on (https://127\.0\.0\.1:\d+/)", line)
            assert found, line
            url = found.group(1)
            assert refused(url + "api/devices", trusting(secured.ca))[0] == 401
            assert refused(url + "api/devices", trusting(secured.ca), secured.infer)[0] == 403
            assert get(url + "api/devices", trusting(secured.ca), secured.admin)["total"] == 0
        finally:
            process.terminate()
            assert process.wait(timeout=30) == 0
