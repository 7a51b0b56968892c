"""``edgefabric model|keys|audit|store`` commands: the ops team's view of the model store."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from edgefabric.errors import EdgefabricError, InvalidModelError
from edgefabric.golden import Tolerance
from edgefabric.security.flags import add_mqtt_tls_arguments
from edgefabric.targets import model_target_path
from model_store.distribution import DEFAULT_CHUNK_SIZE
from model_store.enroll import mqtt_tls_from, register_enroll
from model_store.export import DEFAULT_MAX_BATCH_SIZE, export_versions
from model_store.fleet_view import register_fleet_status
from model_store.home import StoreHome
from model_store.keys import ROLES
from model_store.registry import ModelVersion, Stage
from model_store.rollout_cli import register_rollout
from model_store.route_cli import register_route
from model_store.simulate import register_simulate
from model_store.store import ModelStore, PushRequest

__all__ = ["register"]


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    result = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidModelError(f"{flag} {item!r}: expected KEY=VALUE")
        result[key] = value
    return result


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def _ref(text: str) -> tuple[str, int]:
    name, sep, version = text.partition(":")
    if not sep or not version.isdigit():
        raise InvalidModelError(f"{text!r}: expected NAME:VERSION, like {name or 'mlp'}:3")
    return name, int(version)


def _run(action: Callable[[ModelStore, argparse.Namespace], int]) -> Callable[..., int]:
    """Open the store, run ``action``, and turn project errors into a message and exit 1."""

    def handler(args: argparse.Namespace) -> int:
        try:
            store = ModelStore(StoreHome.from_env(args.home))
        except EdgefabricError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        try:
            return action(store, args)
        except EdgefabricError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            store.close()

    return handler


# ---------------------------------------------------------------------- model


def _push(store: ModelStore, args: argparse.Namespace) -> int:
    lineage = _pairs(args.lineage, "--lineage")
    if "parent" in lineage:
        store.resolve(f"{args.name}:{lineage['parent']}")  # a parent must exist
    version = store.push(
        PushRequest(
            path=args.path,
            name=args.name,
            version=args.version,
            labels=_pairs(args.label, "--label"),
            lineage=lineage,
            golden_inputs=args.golden,
            tolerance=Tolerance(rtol=args.rtol, atol=args.atol),
        )
    )
    golden = " with golden vectors" if version.golden else ""
    print(f"pushed {version.ref} sha256:{version.sha256[:12]} {_size(version.size)}{golden}")
    return 0


def _list(store: ModelStore, args: argparse.Namespace) -> int:
    by_name: dict[str, list[ModelVersion]] = {}
    for version in store.registry.versions():
        by_name.setdefault(version.name, []).append(version)
    rows = []
    for name, versions in by_name.items():
        staged = {s: [str(v.version) for v in versions if v.stage is s] for s in Stage}
        rows.append(
            [
                name,
                len(versions),
                versions[-1].version,
                ",".join(staged[Stage.PRODUCTION]) or "-",
                ",".join(staged[Stage.STAGING]) or "-",
            ]
        )
    if not rows:
        print("no models yet: push one with `edgefabric model push PATH --name NAME`")
        return 0
    print(_table(["MODEL", "VERSIONS", "LATEST", "PRODUCTION", "STAGING"], rows))
    return 0


def _show(store: ModelStore, args: argparse.Namespace) -> int:
    versions = store.resolve(args.ref)
    try:
        signed = store.tuf().targets()
    except EdgefabricError:
        signed = {}
    rows = []
    for v in versions:
        target = signed.get(model_target_path(v.name, v.version))
        state = "signed" if target and target.sha256 == v.sha256 else "UNSIGNED"
        rows.append(
            [
                v.version,
                v.stage.value,
                _size(v.size),
                v.sha256[:12],
                state,
                "yes" if v.golden else "-",
                v.created_by,
                v.created_at,
            ]
        )
    headers = ["VERSION", "STAGE", "SIZE", "SHA256", "SIGNATURE", "GOLDEN", "BY", "AT"]
    print(_table(headers, rows))
    from edgefabric.models.contract import ModelContract  # noqa: PLC0415

    for v in versions if len(versions) == 1 else versions[-1:]:
        contract = ModelContract.from_json(v.contract)
        print(f"\n{v.ref}  opset {contract.opset}  needs {contract.runtime}")
        print(contract.describe())
        for title, pairs in (("labels", v.labels), ("lineage", v.lineage)):
            if pairs:
                print(f"{title}: " + ", ".join(f"{k}={val}" for k, val in sorted(pairs.items())))
    return 0


def _promote(store: ModelStore, args: argparse.Namespace) -> int:
    name, version = _ref(args.ref)
    done = store.promote(name, version, Stage(args.stage))
    print(f"{done.ref} is now in {done.stage.value}")
    return 0


def _deprecate(store: ModelStore, args: argparse.Namespace) -> int:
    name, version = _ref(args.ref)
    done = store.deprecate(name, version)
    print(f"{done.ref} is deprecated")
    return 0


def _verify(store: ModelStore, args: argparse.Namespace) -> int:
    report = store.verify(args.ref)
    bad = 0
    for subject, problems in report.items():
        print(f"{subject}: {'ok' if not problems else 'FAILED'}")
        for problem in problems:
            print(f"  - {problem}")
        bad += bool(problems)
    return 1 if bad else 0


def _export(store: ModelStore, args: argparse.Namespace) -> int:
    versions = [v for v in store.resolve(args.name) if v.stage.value == args.stage]
    if not versions:
        print(f"error: {args.name} has no version in {args.stage}", file=sys.stderr)
        return 1
    folder = export_versions(versions, store.blobs, args.to, max_batch_size=args.max_batch_size)
    print(f"exported {args.name} versions {[v.version for v in versions]} to {folder}")
    return 0


def _register_model(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    group = commands.add_parser("model", help="push, inspect, stage and export model versions")
    sub = group.add_subparsers(dest="action", required=True)

    push = sub.add_parser("push", parents=[common], help="validate, store and sign a model")
    push.add_argument("path", type=Path, help="the .onnx file")
    push.add_argument("--name", required=True, help="model name")
    push.add_argument("--version", type=int, help="version number (default: the next one)")
    push.add_argument("--label", action="append", help="KEY=VALUE label (repeatable)")
    push.add_argument(
        "--lineage",
        action="append",
        help="KEY=VALUE provenance: source_commit, dataset_hash, parameters, parent (repeatable)",
    )
    push.add_argument("--golden", type=Path, help=".npz of inputs; outputs are stored as tests")
    push.add_argument("--rtol", type=float, default=Tolerance().rtol, help="golden rtol")
    push.add_argument("--atol", type=float, default=Tolerance().atol, help="golden atol")
    push.set_defaults(handler=_run(_push))

    listing = sub.add_parser("list", parents=[common], help="every model and its stages")
    listing.set_defaults(handler=_run(_list))

    show = sub.add_parser("show", parents=[common], help="versions, stages, hashes, lineage")
    show.add_argument("ref", help="NAME or NAME:VERSION")
    show.set_defaults(handler=_run(_show))

    promote = sub.add_parser("promote", parents=[common], help="move a version to a stage")
    promote.add_argument("ref", help="NAME:VERSION")
    promote.add_argument("--stage", required=True, choices=["staging", "production"])
    promote.set_defaults(handler=_run(_promote))

    deprecate = sub.add_parser("deprecate", parents=[common], help="retire a version for good")
    deprecate.add_argument("ref", help="NAME:VERSION")
    deprecate.set_defaults(handler=_run(_deprecate))

    verify = sub.add_parser("verify", parents=[common], help="re-check hashes and signatures")
    verify.add_argument("ref", nargs="?", help="NAME or NAME:VERSION (default: everything)")
    verify.set_defaults(handler=_run(_verify))

    export = sub.add_parser("export", parents=[common], help="write a Triton-layout repository")
    export.add_argument("name", help="model name")
    export.add_argument("--stage", default="production", choices=[s.value for s in Stage])
    export.add_argument("--to", type=Path, required=True, help="model repository folder")
    export.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    export.set_defaults(handler=_run(_export))


# ---------------------------------------------------------------------- keys, audit


def _keys_init(store: ModelStore, args: argparse.Namespace) -> int:
    thresholds = {role: int(n) for role, n in _pairs(args.threshold, "--threshold").items()}
    unknown = set(thresholds) - set(ROLES)
    if unknown:
        raise InvalidModelError(f"--threshold: unknown role(s) {sorted(unknown)}; use {ROLES}")
    store.init_keys(thresholds)
    print(f"created signing keys in {store.home.keys} and a signed repository in {store.home.tuf}")
    print(f"give devices this trust root: {store.home.tuf / 'metadata' / 'root.json'}")
    return 0


def _keys_rotate(store: ModelStore, args: argparse.Namespace) -> int:
    version = store.rotate_keys(args.role)
    print(f"rotated the {args.role} keys; root is now version {version}")
    return 0


def _audit_verify(store: ModelStore, args: argparse.Namespace) -> int:
    problems = store.audit_problems()
    count = len(store.audit.entries()) if not problems else 0
    if problems:
        print("audit log FAILED verification:")
        for problem in problems:
            print(f"  - {problem}")
        return 1
    print(f"audit log intact: {count} entries")
    return 0


def _audit_list(store: ModelStore, args: argparse.Namespace) -> int:
    rows = [[e.seq, e.at, e.actor, e.action, e.subject] for e in store.audit.entries()]
    print(_table(["SEQ", "AT", "ACTOR", "ACTION", "SUBJECT"], rows))
    return 0


def _register_keys_and_audit(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    keys = commands.add_parser("keys", help="the store's TUF signing keys")
    sub = keys.add_subparsers(dest="action", required=True)
    init = sub.add_parser("init", parents=[common], help="create keys and a signed repository")
    init.add_argument(
        "--threshold", action="append", help="ROLE=N signatures needed (and keys made)"
    )
    init.set_defaults(handler=_run(_keys_init))
    rotate = sub.add_parser("rotate", parents=[common], help="replace a role's keys")
    rotate.add_argument("--role", required=True, choices=ROLES)
    rotate.set_defaults(handler=_run(_keys_rotate))

    audit = commands.add_parser("audit", help="the hash-chained audit log")
    sub = audit.add_subparsers(dest="action", required=True)
    sub.add_parser("verify", parents=[common], help="check the chain").set_defaults(
        handler=_run(_audit_verify)
    )
    sub.add_parser("list", parents=[common], help="every entry").set_defaults(
        handler=_run(_audit_list)
    )


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (pick a free one) to 65535."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(
            f"expected a port number from 0 (pick a free one) to 65535, got {text!r}"
        )
    return int(text)


def _store_serve(store: ModelStore, args: argparse.Namespace) -> int:
    from edgefabric.mqtt import BrokerAddress  # noqa: PLC0415  (paho only where it is used)
    from model_store.serve import StoreServer, StoreServerOptions  # noqa: PLC0415

    try:
        options = StoreServerOptions(
            broker=BrokerAddress.parse(args.broker),
            client_id=args.client_id,
            chunk_size=args.chunk_size,
            refresh_interval_s=args.refresh_interval_s,
            tls=mqtt_tls_from(args),
            http_port=args.http_port,
            http_address=args.http_address,
            http_auth=args.auth,
            http_tls_cert=args.tls_cert,
            http_tls_key=args.tls_key,
            http_tls_client_ca=args.tls_client_ca,
            http_insecure=args.insecure,
            metrics_address=args.metrics_address,
            metrics_port=args.metrics_port,
        )
        StoreServer(store, options).run()
    except ValueError as exc:  # the dashboard's exposure or TLS files
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the dashboard's port is taken
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _register_store(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    group = commands.add_parser("store", help="run the store's serving process")
    sub = group.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", parents=[common], help="serve TUF files and models over MQTT")
    serve.add_argument("--broker", required=True, help="mqtt(s)://HOST:PORT of the MQTT broker")
    add_mqtt_tls_arguments(serve)
    serve.add_argument("--client-id", default="edgefabric-store", help="MQTT client id")
    serve.add_argument(
        "--metrics-port", type=int, default=-1, help="Prometheus /metrics port (-1 = off, 0 = any)"
    )
    serve.add_argument("--metrics-address", default="127.0.0.1", help="Prometheus address")
    serve.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="bytes per artifact chunk"
    )
    serve.add_argument(
        "--refresh-interval-s", type=float, default=600.0, help="how often to check expiry"
    )
    serve.add_argument(
        "--http-port",
        type=_port,
        help="serve the read-only fleet dashboard on this port (0: a free one; default: none)",
    )
    serve.add_argument(
        "--http-address", default="127.0.0.1", help="the dashboard's address (default loopback)"
    )
    dashboard = serve.add_argument_group(
        "dashboard security (without --auth required it stays on loopback)"
    )
    dashboard.add_argument(
        "--auth",
        choices=("none", "required"),
        default="none",
        help="required: the dashboard's API takes admin bearer tokens from the home's token file",
    )
    dashboard.add_argument("--tls-cert", type=Path, help="serve the dashboard over HTTPS (PEM)")
    dashboard.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    dashboard.add_argument(
        "--tls-client-ca", type=Path, help="require client certificates signed by this CA"
    )
    dashboard.add_argument(
        "--insecure",
        action="store_true",
        help="allow a dashboard reachable from the network without auth or without TLS",
    )
    serve.set_defaults(handler=_run(_store_serve))


def _fleet_assign(store: ModelStore, args: argparse.Namespace) -> int:
    from edgefabric.mqtt import BrokerAddress, MqttClient  # noqa: PLC0415
    from model_store.fleet import assign  # noqa: PLC0415

    models = [_ref(text) for text in args.models]
    address = BrokerAddress.parse(args.broker)
    with MqttClient(address, args.client_id, tls=mqtt_tls_from(args)) as mqtt:
        state = assign(store, mqtt, args.device, models)
    refs = " ".join(args.models)
    print(f"{args.device} should run {refs} (desired state sequence {state.sequence}, signed)")
    return 0


def _register_fleet(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    group = commands.add_parser("fleet", help="devices and what they should run")
    sub = group.add_subparsers(dest="action", required=True)
    assign = sub.add_parser("assign", parents=[common], help="set a device's desired models")
    assign.add_argument("device", help="device id")
    assign.add_argument("models", nargs="+", help="NAME:VERSION (one per model)")
    assign.add_argument("--broker", required=True, help="mqtt://HOST:PORT")
    assign.add_argument("--client-id", default="edgefabric-controller", help="MQTT client id")
    add_mqtt_tls_arguments(assign)
    assign.set_defaults(handler=_run(_fleet_assign))
    register_enroll(sub, common, _run)
    register_fleet_status(sub)
    register_simulate(sub)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``model``, ``keys``, ``audit``, ``store``, ``fleet``, ``rollout`` and ``route``
    command groups."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", type=Path, help="store folder (default $EDGEFABRIC_HOME)")
    _register_model(commands, common)
    _register_keys_and_audit(commands, common)
    _register_store(commands, common)
    _register_fleet(commands, common)
    register_rollout(commands, common, _run)
    register_route(commands, common, _run)
