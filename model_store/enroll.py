"""``edgefabric fleet enroll|revoke|identities|broker-config``: MQTT identities and broker ACLs.

The broker takes the client certificate's Common Name as the username
(``use_identity_as_username``); the ACL then grants topics by that name (docs/adr/0015):

* a **device** (``pattern`` lines, ``%u`` = its id) reads only its own desired state, inference
  requests and repository answers, and writes only its own status, health, events, repository
  requests, and answers to relayed inference requests (``ef/v1/relay/resp/+/{itself}``);
* a **controller** (the store's serving process, ``fleet assign``, ``route set``) reads all of
  ``ef/v1/`` and writes desired state, rollout progress, repository answers and the gateways'
  route table (``ef/v1/routes``);
* a **gateway** relays inference requests to devices and reads their answers (on topics under
  its own name) and their reports, publishes its routing statistics on
  ``ef/v1/gw/{its name}/stats`` (a ``topic`` line under its name rather than a ``pattern``, so
  no device can publish there under its own), and reads the store's route table.
  Devices and gateways cannot write ``ef/v1/routes``: only a controller can.

Devices need no ACL change when they enroll (the patterns cover every name); controller and
gateway identities are listed by name, so regenerate the broker configuration after enrolling
one. A revocation reaches the broker through ``crl.pem``: copy it there and restart or reload
(SIGHUP) mosquitto.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgefabric import topics
from edgefabric.errors import StoreError
from edgefabric.files import write_atomic
from model_store.pki import BROKER_IDENTITY, FleetCA, Identity, Role, check_identity_name
from model_store.store import ModelStore

if TYPE_CHECKING:
    from edgefabric.mqtt import MqttTls

__all__ = [
    "BrokerFiles",
    "acl_text",
    "broker_config_text",
    "mqtt_tls_from",
    "register_enroll",
    "write_broker_config",
]

DEFAULT_TLS_PORT = 8883
P = topics.PREFIX

_DEVICE_RULES = (
    ("read", f"{P}/dev/%u/desired"),
    ("read", f"{P}/dev/%u/infer"),
    ("read", f"{P}/repo/resp/%u"),
    ("write", f"{P}/dev/%u/status"),
    ("write", f"{P}/dev/%u/health"),
    ("write", f"{P}/dev/%u/events"),
    ("write", f"{P}/repo/req/%u"),
    # Answers to relayed inference: any gateway, but only on the topic naming this device.
    ("write", f"{P}/relay/resp/+/%u"),
)
_CONTROLLER_RULES = (
    ("read", f"{P}/#"),
    ("write", f"{P}/dev/+/desired"),
    ("write", f"{P}/rollouts/+"),
    ("write", f"{P}/repo/resp/+"),
    ("write", topics.ROUTES),
)


def _gateway_rules(name: str) -> tuple[tuple[str, str], ...]:
    return (
        ("write", f"{P}/dev/+/infer"),
        ("read", f"{P}/dev/+/status"),
        ("read", f"{P}/dev/+/health"),
        ("read", f"{P}/relay/resp/{name}/+"),
        # Routing statistics for the dashboard: under its own name only (the controller's
        # read of ef/v1/# covers them).
        ("write", f"{P}/gw/{name}/stats"),
        # The store's signed route table (--routes-from-broker): read only.
        ("read", topics.ROUTES),
    )


def acl_text(identities: Iterable[Identity]) -> str:
    """The mosquitto ``acl_file`` for the active ``identities`` (devices need no entry)."""
    lines = [
        "# mosquitto ACL written by `edgefabric fleet broker-config`; regenerate it after",
        "# enrolling a controller or gateway identity. The username is the client",
        "# certificate's CN (use_identity_as_username); no topic is open to anyone else.",
        "",
        "# Every device: its own topics only (%u is its id).",
        *(f"pattern {access} {topic}" for access, topic in _DEVICE_RULES),
    ]
    services = sorted(
        {(i.role, i.name) for i in identities if i.active and i.role in _SERVICE_ROLES}
    )
    for role, name in services:
        rules = _CONTROLLER_RULES if role is Role.CONTROLLER else _gateway_rules(name)
        lines += ["", f"# {role.value}", f"user {name}"]
        lines += [f"topic {access} {topic}" for access, topic in rules]
    return "\n".join(lines) + "\n"


_SERVICE_ROLES = frozenset({Role.CONTROLLER, Role.GATEWAY})


@dataclass(frozen=True)
class BrokerFiles:
    """Where the broker finds its files (paths as seen on the broker's host)."""

    ca: Path
    cert: Path
    key: Path
    crl: Path
    acl: Path


def broker_config_text(files: BrokerFiles, *, port: int, bind: str) -> str:
    """A mosquitto.conf: one mutual-TLS listener, identities from certificates, the ACL."""
    return (
        "\n".join(
            [
                "# mosquitto configuration written by `edgefabric fleet broker-config`.",
                "# Only clients with a certificate from the store's fleet CA get in; the CN is",
                "# the username the ACL grants topics to. After `edgefabric fleet revoke`, copy",
                "# the new crl.pem here and restart (or SIGHUP) mosquitto.",
                "per_listener_settings false",
                "allow_anonymous false",
                f"acl_file {files.acl}",
                "",
                f"listener {port} {bind}",
                f"cafile {files.ca}",
                f"certfile {files.cert}",
                f"keyfile {files.key}",
                f"crlfile {files.crl}",
                "require_certificate true",
                "use_identity_as_username true",
                "tls_version tlsv1.2",
            ]
        )
        + "\n"
    )


def write_broker_config(
    ca: FleetCA,
    out: Path,
    *,
    names: Iterable[str] = (),
    port: int = DEFAULT_TLS_PORT,
    bind: str = "127.0.0.1",
    install_dir: Path | None = None,
    with_server_key: bool = True,
) -> dict[str, Path]:
    """Write ``mosquitto.conf``, ``acl``, ``ca.pem``, ``crl.pem`` and (unless
    ``with_server_key`` is false) a fresh broker certificate ``server.pem``/``server.key``
    (0600) into ``out``. The configuration names the files under ``install_dir`` (default:
    ``out`` itself)."""
    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1-65535, got {port}")
    out.mkdir(parents=True, exist_ok=True)
    where = install_dir or out.resolve()
    files = BrokerFiles(
        ca=where / "ca.pem",
        cert=where / "server.pem",
        key=where / "server.key",
        crl=where / "crl.pem",
        acl=where / "acl",
    )
    written = {
        "config": out / "mosquitto.conf",
        "acl": out / "acl",
        "ca": out / "ca.pem",
        "crl": out / "crl.pem",
    }
    if with_server_key:
        credentials = ca.issue_broker(list(names))
        write_atomic(out / "server.key", credentials.key_pem, mode=0o600)
        write_atomic(out / "server.pem", credentials.cert_pem)
        written |= {"cert": out / "server.pem", "key": out / "server.key"}
    write_atomic(written["ca"], ca.ca_pem)
    write_atomic(written["crl"], ca.refresh_crl().read_bytes())
    write_atomic(written["acl"], acl_text(ca.identities(active_only=True)).encode())
    write_atomic(written["config"], broker_config_text(files, port=port, bind=bind).encode())
    return written


# ---------------------------------------------------------------------- CLI

Action = Callable[[ModelStore, argparse.Namespace], int]
Run = Callable[[Action], Callable[..., int]]


def mqtt_tls_from(args: argparse.Namespace) -> MqttTls | None:
    """The TLS options given on the command line, or None when there are none."""
    from edgefabric.mqtt import MqttTls  # noqa: PLC0415  (paho only where it is used)

    if args.mqtt_ca is None and args.mqtt_cert is None and args.mqtt_key is None:
        return None
    if not str(args.broker).startswith("mqtts://"):
        raise StoreError(
            f"--mqtt-ca/--mqtt-cert/--mqtt-key need a TLS broker URL (mqtts://HOST:PORT), "
            f"got {args.broker!r}"
        )
    try:
        tls = MqttTls(args.mqtt_ca, args.mqtt_cert, args.mqtt_key)
        tls.context()  # unreadable or mismatched files are reported here, not as a traceback
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    return tls


def _refusing_bad_values(action: Action) -> Action:
    """A ValueError from a bad argument becomes a StoreError: a message and exit status 1."""

    @functools.wraps(action)
    def wrapped(store: ModelStore, args: argparse.Namespace) -> int:
        try:
            return action(store, args)
        except ValueError as exc:
            raise StoreError(str(exc)) from None

    return wrapped


def _enroll(store: ModelStore, args: argparse.Namespace) -> int:
    name = check_identity_name(args.name)
    out: Path = args.out or Path(name)
    role = Role(args.role)
    with store.home.exclusive(), store.registry.transaction():
        ca = FleetCA.open(store.home.pki)
        credentials = ca.issue(name, role, days=args.days, replace=args.replace)
        files = credentials.write(out)
        store.record(
            "fleet.enroll",
            name,
            {"role": role.value, "serial": f"{credentials.identity.serial:x}"},
        )
    print(f"enrolled {name} as {role.value} (certificate serial {credentials.identity.serial:x})")
    for kind, path in files.items():
        print(f"  {kind:<5} {path}")
    if role is not Role.DEVICE:
        print("regenerate the broker configuration (`edgefabric fleet broker-config`) so the ACL")
        print(f"grants {name} its {role.value} topics")
    return 0


def _revoke(store: ModelStore, args: argparse.Namespace) -> int:
    with store.home.exclusive(), store.registry.transaction():
        ca = FleetCA.open(store.home.pki)
        revoked = ca.revoke(args.name)
        serials = [f"{identity.serial:x}" for identity in revoked]
        store.record("fleet.revoke", args.name, {"serials": serials})
    print(f"revoked {args.name} (certificate serial {', '.join(serials)})")
    print(f"copy {ca.crl_path} to the broker's crlfile and restart or reload (SIGHUP) mosquitto")
    return 0


def _identities(store: ModelStore, args: argparse.Namespace) -> int:
    ca = FleetCA.open(store.home.pki)
    rows = [
        (
            i.name,
            i.role.value,
            f"{i.serial:x}"[:16],
            f"{i.not_after:%Y-%m-%d}",
            f"revoked {i.revoked_at:%Y-%m-%d}" if i.revoked_at else "valid",
        )
        for i in ca.identities()
    ]
    if not rows:
        print("no identities yet: `edgefabric fleet enroll DEVICE` issues one")
        return 0
    headers = ("NAME", "ROLE", "SERIAL", "EXPIRES", "STATE")
    widths = [max(len(str(row[i])) for row in (headers, *rows)) for i in range(len(headers))]
    for row in (headers, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _broker_config(store: ModelStore, args: argparse.Namespace) -> int:
    with store.home.exclusive(), store.registry.transaction():
        ca = FleetCA.open(store.home.pki)
        written = write_broker_config(
            ca,
            args.out,
            names=args.name or (),
            port=args.port,
            bind=args.bind,
            install_dir=args.install_dir,
            with_server_key=not args.no_server_key,
        )
        store.record("fleet.broker_config", BROKER_IDENTITY, {"names": list(args.name or ())})
    print(f"wrote the broker configuration to {args.out}:")
    for kind, path in written.items():
        print(f"  {kind:<6} {path}")
    print(f"run it with: mosquitto -c {written['config']}")
    return 0


def register_enroll(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    run: Run,
) -> None:
    """Add ``enroll``, ``revoke``, ``identities`` and ``broker-config`` to ``fleet``."""
    enroll = sub.add_parser(
        "enroll", parents=[common], help="issue an MQTT client certificate (CN = the name)"
    )
    enroll.add_argument("name", metavar="DEVICE", help="device id (or service name with --role)")
    enroll.add_argument(
        "--role",
        choices=[r.value for r in Role if r is not Role.BROKER],
        default=Role.DEVICE.value,
        help="what the identity may do on the broker (default: device)",
    )
    enroll.add_argument("--out", type=Path, help="folder for key.pem, cert.pem, ca.pem (./NAME)")
    enroll.add_argument("--days", type=int, default=365, help="certificate validity in days")
    enroll.add_argument(
        "--replace", action="store_true", help="issue anew and revoke the name's earlier certs"
    )
    enroll.set_defaults(handler=run(_refusing_bad_values(_enroll)))

    revoke = sub.add_parser("revoke", parents=[common], help="revoke a name's certificates")
    revoke.add_argument("name", metavar="DEVICE", help="device id or service name")
    revoke.set_defaults(handler=run(_refusing_bad_values(_revoke)))

    listing = sub.add_parser("identities", parents=[common], help="every certificate issued")
    listing.set_defaults(handler=run(_refusing_bad_values(_identities)))

    config = sub.add_parser(
        "broker-config", parents=[common], help="write mosquitto's TLS listener, ACL and CRL"
    )
    config.add_argument("--out", type=Path, required=True, help="folder to write into")
    config.add_argument(
        "--name",
        action="append",
        help="DNS name or IP the broker is reached by, besides localhost (repeatable)",
    )
    config.add_argument("--port", type=int, default=DEFAULT_TLS_PORT, help="TLS listener port")
    config.add_argument("--bind", default="127.0.0.1", help="listener address (0.0.0.0: all)")
    config.add_argument(
        "--install-dir", type=Path, help="where the files will live on the broker's host"
    )
    config.add_argument(
        "--no-server-key",
        action="store_true",
        help="write no broker key/certificate (refresh the ACL and CRL only)",
    )
    config.set_defaults(handler=run(_refusing_bad_values(_broker_config)))
