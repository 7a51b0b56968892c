"""The fleet CA, the ACL and broker configuration it drives, and the MQTT TLS options.

No sockets: certificates are checked with ``cryptography``, configuration as text. The broker
enforcing all this is tested in tests/integration/test_broker_acl.py.
"""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from edge_agent.settings import AgentSettings
from edgefabric.cli import main
from edgefabric.errors import ConflictError, SigningKeyError, StoreError
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress, MqttClient, MqttTls
from gateway.pools.edge import certificate_name
from gateway.settings import GatewaySettings
from model_store.enroll import BrokerFiles, acl_text, broker_config_text
from model_store.pki import FleetCA, Identity, Role

pytestmark = pytest.mark.unit


@pytest.fixture
def ca(tmp_path: Path) -> FleetCA:
    return FleetCA.open(tmp_path / "pki")


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _crl(ca: FleetCA) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(ca.crl_path.read_bytes())


def test_the_ca_is_created_on_first_use_with_private_files_and_reopened_after(
    ca: FleetCA,
) -> None:
    assert stat.S_IMODE(ca.folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((ca.folder / "ca.key").stat().st_mode) == 0o600
    again = FleetCA.open(ca.folder)
    assert again.ca_pem == ca.ca_pem
    root = _cert(ca.ca_pem)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_a_device_certificate_names_the_device_and_is_for_clients_only(
    ca: FleetCA, tmp_path: Path
) -> None:
    credentials = ca.issue("cam-7", Role.DEVICE)
    cert = _cert(credentials.cert_pem)
    cert.verify_directly_issued_by(_cert(ca.ca_pem))
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cam-7"
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    files = credentials.write(tmp_path / "out")
    assert stat.S_IMODE(files["key"].stat().st_mode) == 0o600
    assert files["ca"].read_bytes() == ca.ca_pem
    assert [p.name for p in ca.folder.rglob("*.key")] == ["ca.key"]  # device keys are not kept


def test_the_broker_certificate_is_for_servers_and_names_loopback_and_given_names(
    ca: FleetCA,
) -> None:
    cert = _cert(ca.issue_broker(["mqtt.plant-7.example", "10.0.0.5"]).cert_pem)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "mqtt.plant-7.example"}
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.0.0.5")
    }
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_a_revoked_certificate_is_in_the_signed_crl(ca: FleetCA) -> None:
    kept = ca.issue("cam-1", Role.DEVICE).identity
    gone = ca.issue("cam-2", Role.DEVICE).identity
    before = _crl(ca)
    (revoked,) = ca.revoke("cam-2")
    assert revoked.serial == gone.serial
    assert not revoked.active
    crl = _crl(ca)
    assert crl.is_signature_valid(_cert(ca.ca_pem).public_key())  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(gone.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(kept.serial) is None
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    old = before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > old
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > datetime.now(UTC)
    assert FleetCA.open(ca.folder).identities_named("cam-2")[0].revoked_at is not None


def test_revoking_an_unknown_or_revoked_name_says_so(ca: FleetCA) -> None:
    with pytest.raises(StoreError, match="'ghost': it was never enrolled"):
        ca.revoke("ghost")
    ca.issue("cam-1", Role.DEVICE)
    ca.revoke("cam-1")
    with pytest.raises(StoreError, match="'cam-1': it is revoked"):
        ca.revoke("cam-1")


def test_a_name_is_enrolled_once_unless_replaced_and_keeps_its_role(ca: FleetCA) -> None:
    first = ca.issue("cam-1", Role.DEVICE).identity
    with pytest.raises(ConflictError, match="already holds a valid certificate; pass --replace"):
        ca.issue("cam-1", Role.DEVICE)
    second = ca.issue("cam-1", Role.DEVICE, replace=True).identity
    states = {i.serial: i.active for i in ca.identities_named("cam-1")}
    assert states == {first.serial: False, second.serial: True}
    with pytest.raises(ConflictError, match="already enrolled as device, not controller"):
        ca.issue("cam-1", Role.CONTROLLER, replace=True)


@pytest.mark.parametrize("name", ["", "a/b", "+", "#", "$SYS", "-x", "x" * 129, "a b"])
def test_a_name_that_cannot_be_a_topic_level_is_refused(ca: FleetCA, name: str) -> None:
    with pytest.raises(ValueError, match="is not allowed: use 1-128 letters"):
        ca.issue(name, Role.DEVICE)


def test_bad_validity_and_broker_names_are_refused(ca: FleetCA) -> None:
    with pytest.raises(ValueError, match="at least 1 day, got 0"):
        ca.issue("cam-1", Role.DEVICE, days=0)
    with pytest.raises(ValueError, match="neither an IP address nor a DNS name"):
        ca.issue_broker(["bad name!"])
    with pytest.raises(ValueError, match="issue_broker"):
        ca.issue("x", Role.BROKER)


def test_a_damaged_ca_is_reported_not_replaced(ca: FleetCA) -> None:
    (ca.folder / "identities.json").write_text("{not json")
    with pytest.raises(SigningKeyError, match=r"unreadable .*restore the folder from a backup"):
        FleetCA.open(ca.folder)


def test_the_acl_confines_devices_by_pattern_and_lists_active_services(ca: FleetCA) -> None:
    ca.issue("cam-1", Role.DEVICE)
    ca.issue("edgefabric-store", Role.CONTROLLER)
    ca.issue("gw-1", Role.GATEWAY)
    ca.issue("old-controller", Role.CONTROLLER)
    ca.revoke("old-controller")
    acl = acl_text(ca.identities()).splitlines()
    assert "pattern read ef/v1/dev/%u/desired" in acl
    assert "pattern write ef/v1/dev/%u/status" in acl
    assert not [line for line in acl if line.startswith("pattern write") and "desired" in line]
    assert not [line for line in acl if "cam-1" in line]  # devices need no entry
    store = acl.index("user edgefabric-store")
    assert acl[store + 1 : store + 3] == [
        "topic read ef/v1/#",
        "topic write ef/v1/dev/+/desired",
    ]
    gateway = acl.index("user gw-1")
    assert "topic read ef/v1/relay/resp/gw-1/+" in acl[gateway:]
    assert "topic write ef/v1/gw/gw-1/stats" in acl[gateway:]  # its own statistics only
    assert not [line for line in acl if line.startswith("pattern") and "/gw/" in line]
    assert "pattern write ef/v1/relay/resp/+/%u" in acl  # each device answers on its own topic
    assert not [line for line in acl if line.startswith("pattern") and "%u" not in line]
    assert "user old-controller" not in acl
    first_user = next(i for i, line in enumerate(acl) if line.startswith("user "))
    assert not [line for line in acl[:first_user] if line.startswith("topic")]  # anonymous


def test_the_broker_configuration_requires_certificates_and_uses_the_cn() -> None:
    files = BrokerFiles(*(Path(f"/etc/ef/{n}") for n in ("ca", "cert", "key", "crl", "acl")))
    text = broker_config_text(files, port=8883, bind="127.0.0.1").splitlines()
    for line in (
        "allow_anonymous false",
        "listener 8883 127.0.0.1",
        "require_certificate true",
        "use_identity_as_username true",
        "crlfile /etc/ef/crl",
        "acl_file /etc/ef/acl",
    ):
        assert line in text


def test_a_private_broker_needs_a_configuration_with_one_listener(tmp_path: Path) -> None:
    config = tmp_path / "mosquitto.conf"
    config.write_text("listener 1883\nlistener 8883\n")
    with pytest.raises(ValueError, match="has 2 `listener` lines"):
        PrivateBroker(tmp_path / "run", config_file=config)


# ------------------------------------------------------------------ MQTT TLS options


def test_tls_files_are_checked_and_named(ca: FleetCA, tmp_path: Path) -> None:
    files = ca.issue("cam-1", Role.DEVICE).write(tmp_path / "cam-1")
    other = ca.issue("cam-2", Role.DEVICE).write(tmp_path / "cam-2")
    MqttTls(files["ca"], files["cert"], files["key"]).context()
    with pytest.raises(ValueError, match="needs its key"):
        MqttTls(files["ca"], files["cert"])
    with pytest.raises(ValueError, match=r"CA file .*nope\.pem does not exist"):
        MqttTls(tmp_path / "nope.pem").context()
    with pytest.raises(ValueError, match="are both PEM, and the key the certificate's"):
        MqttTls(files["ca"], files["cert"], other["key"]).context()
    with pytest.raises(ValueError, match="holds no usable PEM certificate"):
        MqttTls(files["key"]).context()
    plain = BrokerAddress.parse("mqtt://127.0.0.1:1883")
    with pytest.raises(ValueError, match="use an mqtts:// URL"):
        MqttClient(plain, "x", tls=MqttTls(files["ca"]))


def _agent(tmp_path: Path, **values: object) -> AgentSettings:
    root = tmp_path / "root.json"
    root.write_text("{}")
    base: dict[str, object] = {
        "device_id": "cam-1",
        "broker": "mqtts://127.0.0.1:8883",
        "trust_root": root,
        "data_dir": tmp_path / "data",
        "allow_unsigned_desired": True,
    }
    return AgentSettings(**{**base, **values})  # type: ignore[arg-type]


def test_agent_tls_settings_are_validated_when_they_load(ca: FleetCA, tmp_path: Path) -> None:
    files = ca.issue("cam-1", Role.DEVICE).write(tmp_path / "cam-1")
    good = _agent(tmp_path, mqtt_ca=files["ca"], mqtt_cert=files["cert"], mqtt_key=files["key"])
    assert good.mqtt_key == files["key"]
    with pytest.raises(ValidationError, match="need a TLS broker: broker must be mqtts://"):
        _agent(tmp_path, broker="mqtt://127.0.0.1:1883", mqtt_ca=files["ca"])
    with pytest.raises(ValidationError, match="needs its key"):
        _agent(tmp_path, mqtt_cert=files["cert"])
    with pytest.raises(ValidationError, match="does not exist"):
        _agent(tmp_path, mqtt_ca=tmp_path / "missing.pem")


def _gateway(tmp_path: Path, *pools: str, **values: object) -> GatewaySettings:
    base: dict[str, object] = {"model_repository": tmp_path, "pools": pools}
    return GatewaySettings(**{**base, **values})  # type: ignore[arg-type]


def test_gateway_mqtt_tls_settings_are_validated_when_they_load(
    ca: FleetCA, tmp_path: Path
) -> None:
    files = ca.issue("gw-1", Role.GATEWAY).write(tmp_path / "gw-1")
    tls = {"mqtt_ca": files["ca"], "mqtt_cert": files["cert"], "mqtt_key": files["key"]}
    good = _gateway(tmp_path, "edge=mqtts://127.0.0.1:8883", **tls)
    assert good.mqtt_tls() == MqttTls(files["ca"], files["cert"], files["key"])
    assert certificate_name(files["cert"]) == "gw-1"  # the pool's answer topics use the CN
    with pytest.raises(ValidationError, match=r"are for mqtts:// pools and an mqtts:// --repo"):
        _gateway(tmp_path, "edge=mqtt://127.0.0.1:1883", **tls)
    with pytest.raises(ValidationError, match="needs its key"):
        _gateway(tmp_path, "edge=mqtts://127.0.0.1:8883", mqtt_cert=files["cert"])
    with pytest.raises(ValidationError, match="does not exist"):
        _gateway(tmp_path, "edge=mqtts://127.0.0.1:8883", mqtt_ca=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match=r"cannot read MQTT client certificate .*key\.pem"):
        certificate_name(files["key"])


# ------------------------------------------------------------------ the CLI


def test_enroll_writes_credentials_and_bad_input_exits_1_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ["--home", str(tmp_path / "home")]
    assert main(["fleet", "enroll", "cam-1", "--out", str(tmp_path / "c"), *home]) == 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert main(["fleet", "enroll", "cam/1", *home]) == 1
    assert "identity 'cam/1' is not allowed" in capsys.readouterr().err
    assert main(["fleet", "revoke", "nobody", *home]) == 1
    assert "'nobody': it was never enrolled" in capsys.readouterr().err
    assert main(["fleet", "broker-config", "--out", str(tmp_path / "b"), "--port", "0", *home]) == 1
    assert "--port must be in 1-65535, got 0" in capsys.readouterr().err
    assign = ["fleet", "assign", "cam-1", "m:1", "--broker", "mqtt://127.0.0.1:1", *home]
    assert main([*assign, "--mqtt-ca", str(tmp_path / "c" / "ca.pem")]) == 1
    assert "need a TLS broker URL (mqtts://HOST:PORT)" in capsys.readouterr().err
    assert main(["fleet", "identities", *home]) == 0
    assert "cam-1" in capsys.readouterr().out


def test_simulate_and_status_take_the_mqtt_tls_flags_and_refuse_them_without_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca_pem = ["--mqtt-ca", str(tmp_path / "ca.pem")]
    plain = ["--broker", "mqtt://127.0.0.1:1"]
    assert main(["fleet", "simulate", *plain, *ca_pem]) == 2
    assert "need a TLS broker URL (mqtts://HOST:PORT)" in capsys.readouterr().err
    tls = ["--broker", "mqtts://127.0.0.1:1", *ca_pem]
    assert main(["fleet", "simulate", *tls]) == 2
    assert f"CA file {tmp_path / 'ca.pem'} does not exist" in capsys.readouterr().err
    status = ["fleet", "status", "--home", str(tmp_path / "home")]
    assert main([*status, *ca_pem]) == 2
    assert "give --broker mqtts://HOST:PORT too" in capsys.readouterr().err
    assert main([*status, *plain, *ca_pem]) == 1
    assert "need a TLS broker URL (mqtts://HOST:PORT)" in capsys.readouterr().err


def test_the_example_in_deploy_matches_the_generator() -> None:
    """deploy/mosquitto/ is what broker-config writes for the identities its README names."""
    where = Path("/etc/mosquitto/edgefabric")
    files = BrokerFiles(
        ca=where / "ca.pem",
        cert=where / "server.pem",
        key=where / "server.key",
        crl=where / "crl.pem",
        acl=where / "acl",
    )
    at = datetime(2025, 1, 1, tzinfo=UTC)
    services = [
        ("edgefabric-store", Role.CONTROLLER),
        ("edgefabric-controller", Role.CONTROLLER),
        ("edgefabric-gateway", Role.GATEWAY),
    ]
    identities = [Identity(n, r, i, at, at) for i, (n, r) in enumerate(services, start=1)]
    example = Path(__file__).parents[2] / "deploy" / "mosquitto"
    assert (example / "acl").read_text() == acl_text(identities)
    config = broker_config_text(files, port=8883, bind="0.0.0.0")
    assert (example / "mosquitto.conf").read_text() == config
