"""``edgefabric gateway ...`` commands."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from pydantic import ValidationError

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
        help="remote KServe v2 pool NAME=grpc://HOST:PORT (repeatable)",
    )
    serve.add_argument(
        "--route", dest="routes", action="append", help="route table entry (repeatable)"
    )
    serve.set_defaults(handler=_serve)


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
