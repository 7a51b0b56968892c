"""The ``edgefabric`` command line.

Command groups live with the component they drive (``gateway.cli``, later ``model_store.cli``
and ``edge_agent.cli``) and are imported by name, so the shared kernel never imports them
statically and a device without the gateway installed still has a working ``edgefabric``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edgefabric.telemetry.logs import configure_logging

__all__ = ["main"]

_COMMAND_GROUPS = (
    "gateway.cli",
    "model_store.cli",
    "edge_agent.cli",
    "edgefabric.fabric.cli",
    "model_store.token_cli",
)


def build_parser() -> argparse.ArgumentParser:
    """The parser with every installed command group."""
    parser = argparse.ArgumentParser(prog="edgefabric", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        help="text lines, or one JSON object per line (default $EDGEFABRIC_LOG_FORMAT or text)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for module_name in _COMMAND_GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    try:
        configure_logging(args.log_level, args.log_format)
    except ValueError as exc:
        raise SystemExit(f"edgefabric: {exc}") from None
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
