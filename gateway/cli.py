"""``edgefabric gateway ...`` commands."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from pydantic import ValidationError

from edgefabric.security.flags import add_mqtt_tls_arguments, add_tls_arguments
from gateway.settings import GatewaySettings

__all__ = ["register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``gateway`` command group."""
    group = commands.add_parser("gateway", help="run the KServe v2 gateway")
    sub = group.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="serve a Triton-layout model repository")
    serve.add_argument("--model-repository", type=Path, help="model repository folder")
    serve.add_argument("--grpc-address", help="bind address (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 = any free)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus port (default 8002; -1 = off)")
    serve.add_argument("--otlp-endpoint", help="send traces to this OTLP/gRPC collector")
    serve.add_argument("--max-message-bytes", type=int, help="largest message accepted")
    serve.add_argument(
        "--max-concurrent-rpcs", type=int, help="shed RPCs beyond this many in progress (0 = off)"
    )
    serve.add_argument(
        "--execution-provider",
        dest="execution_providers",
        action="append",
        help="ONNX Runtime provider, in order of preference (repeatable)",
    )
    serve.add_argument(
        "--pool",
        dest="pools",
        action="append",
        help="pool NAME=grpc://HOST:PORT (a KServe v2 server) or NAME=mqtt[s]://HOST:PORT (edge "
        "agents behind that broker, by relay); repeatable",
    )
    add_mqtt_tls_arguments(
        serve, cert_help="the gateway's MQTT client certificate (PEM, role gateway)"
    )
    serve.add_argument(
        "--route", dest="routes", action="append", help="route table entry (repeatable)"
    )
    serve.add_argument(
        "--routes-from-broker",
        action="store_true",
        default=None,
        help="also apply the store's signed route table (`edgefabric route set`) from the fleet "
        "broker (--report-broker, else the first mqtt[s]:// pool's); it wins over --route",
    )
    serve.add_argument(
        "--routes-key",
        type=Path,
        help="the controller's public key (the store's controller.pub) route tables must be "
        "signed with (default: controller.pub in --home / $EDGEFABRIC_HOME)",
    )
    serve.add_argument(
        "--report-broker",
        help="publish routing statistics to this mqtt[s]://HOST:PORT broker for the store's "
        "dashboard (default: the first mqtt[s]:// pool's broker)",
    )
    serve.add_argument(
        "--report-interval-s", type=float, help="seconds between statistics reports (0 = off)"
    )
    serve.add_argument(
        "--gateway-id", help="name in the statistics topic (default: the --mqtt-cert CN, else host)"
    )
    add_tls_arguments(serve)
    serve.add_argument(
        "--auth",
        choices=("none", "required"),
        help="'required': bearer tokens from the home's token store (default none: loopback only)",
    )
    serve.add_argument(
        "--allow-anonymous",
        action="store_true",
        default=None,
        help="allow --auth none on an address other machines can reach",
    )
    serve.add_argument("--home", type=Path, help="EDGEFABRIC_HOME: tokens and audit log")
    serve.add_argument(
        "--max-deadline-s", type=float, help="longest deadline honoured (default 300; 0 = no cap)"
    )
    serve.add_argument(
        "--admission-max-in-flight",
        type=int,
        help="refuse ModelInfer calls beyond this many in progress (RESOURCE_EXHAUSTED; 0 = off)",
    )
    serve.add_argument(
        "--admission-min-in-flight",
        type=int,
        help="check deadlines against the predicted wait from this many calls in progress "
        "(default 4)",
    )
    serve.set_defaults(handler=_serve)
    _register_swap(sub)


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        key: value
        for key, value in vars(args).items()
        if key in GatewaySettings.model_fields and value is not None
    }
    try:
        settings = GatewaySettings(**overrides)
    except ValidationError as exc:
        raise SystemExit(f"edgefabric gateway serve: invalid settings:\n{exc}") from None
    from gateway.app import Gateway  # noqa: PLC0415  (keeps every other command's start fast)

    asyncio.run(Gateway(settings).run())
    return 0


def _register_swap(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    swap = sub.add_parser(
        "swap",
        help="move a model to another version with no failed request",
        description="Load POOL@VERSION next to the version the pool serves, wait until it is "
        "ready, shift the pool's traffic to it in STEPS, then unload the old version.",
    )
    swap.add_argument("model", help="the model to swap")
    swap.add_argument("--to", required=True, help="POOL@VERSION to serve, e.g. local@2")
    swap.add_argument("--gateway", default="127.0.0.1:8001", help="gateway HOST:PORT")
    swap.add_argument("--steps", type=int, default=4, help="weight shifts (default 4)")
    swap.add_argument("--step-s", type=float, default=1.0, help="seconds between shifts")
    swap.add_argument(
        "--token", help="bearer token with the admin role (default: $EDGEFABRIC_TOKEN)"
    )
    swap.set_defaults(handler=_swap)


def _swap(args: argparse.Namespace) -> int:
    import grpc  # noqa: PLC0415  (keeps every other command's start fast)

    from gateway.admin import swap  # noqa: PLC0415

    token = args.token or os.environ.get("EDGEFABRIC_TOKEN", "")
    metadata = [("authorization", f"Bearer {token}")] if token else []
    try:
        for progress in swap(
            args.gateway,
            args.model,
            args.to,
            steps=args.steps,
            step_s=args.step_s,
            metadata=metadata,
        ):
            share = float(progress.get("new_share", 0.0))
            print(f"{progress.get('phase', '?'):<7} {share:>4.0%}  {progress.get('detail', '')}")
    except grpc.RpcError as exc:
        raise SystemExit(f"edgefabric gateway swap: {exc.code().name}: {exc.details()}") from None
    return 0
