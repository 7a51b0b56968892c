"""``edgefabric agent run``: the device agent as a process."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.settings import AgentSettings, read_settings_file
from edgefabric.security.flags import TLS_FIELDS, add_mqtt_tls_arguments, add_tls_arguments

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``agent`` command group."""
    group = commands.add_parser("agent", help="run the edge agent on a device")
    sub = group.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="sync signed models over MQTT and serve them locally")
    run.add_argument("--settings", type=Path, help="TOML file with any of the settings below")
    run.add_argument("--device-id", help="this device's id")
    run.add_argument("--broker", help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    add_mqtt_tls_arguments(run, cert_help="this device's client certificate (PEM)")
    run.add_argument("--trust-root", type=Path, help="the store's TUF root.json")
    run.add_argument("--data-dir", type=Path, help="where the agent keeps models and state")
    run.add_argument("--desired-key", type=Path, help="controller public key (PEM)")
    run.add_argument(
        "--allow-unsigned-desired",
        action="store_true",
        default=None,
        help="accept unsigned desired state (labs only)",
    )
    run.add_argument("--label", action="append", help="KEY=VALUE label (repeatable)")
    run.add_argument("--grpc-address", help="local KServe v2 address (default 127.0.0.1)")
    run.add_argument("--grpc-port", type=int, help="local KServe v2 port (default 8101; 0 = any)")
    run.add_argument(
        "--no-grpc-listen",
        dest="grpc_listen",
        action="store_false",
        default=None,
        help="open no inbound port: serve only requests relayed over MQTT (devices behind NAT)",
    )
    run.add_argument(
        "--relay-max-in-flight",
        type=int,
        help="relayed requests answered at once, more get RESOURCE_EXHAUSTED (default 8; 0 = off)",
    )
    run.add_argument("--metrics-port", type=int, help="Prometheus port (default -1 = off)")
    run.add_argument("--metrics-address", help="Prometheus address (default 127.0.0.1)")
    run.add_argument("--otlp-endpoint", help="send traces to this OTLP/gRPC collector")
    run.add_argument("--health-interval-s", type=float, help="seconds between health reports")
    run.add_argument("--keep-previous", type=int, help="previous versions kept per model")
    add_tls_arguments(run)
    run.set_defaults(handler=_run)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = read_settings_file(args.settings) if args.settings else {}
    for name in TLS_FIELDS:  # flags from edgefabric.security.flags
        if (value := getattr(args, name)) is not None:
            values[name] = value
    for name in (
        "device_id",
        "broker",
        "mqtt_ca",
        "mqtt_cert",
        "mqtt_key",
        "trust_root",
        "data_dir",
        "desired_key",
        "allow_unsigned_desired",
        "grpc_address",
        "grpc_port",
        "grpc_listen",
        "relay_max_in_flight",
        "health_interval_s",
        "keep_previous",
        "metrics_port",
        "metrics_address",
        "otlp_endpoint",
    ):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    if args.label:
        labels = dict(values.get("labels", {}))
        for item in args.label:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--label {item!r}: expected KEY=VALUE")
            labels[key] = value
        values["labels"] = labels
    return values


def _run(args: argparse.Namespace) -> int:
    from edge_agent.agent import EdgeAgent  # noqa: PLC0415  (keeps `--help` light)

    try:
        settings = AgentSettings(**_overrides(args))
    except (ValidationError, ValueError) as exc:
        print(f"error: invalid agent settings:\n{exc}", file=sys.stderr)
        return 2
    asyncio.run(EdgeAgent(settings).run())
    return 0
