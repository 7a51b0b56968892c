"""Command-line flags shared by the commands: gRPC listener TLS and MQTT client TLS."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["TLS_FIELDS", "add_mqtt_tls_arguments", "add_tls_arguments"]

TLS_FIELDS = ("tls_cert", "tls_key", "tls_client_ca", "tls_client_auth", "insecure")
"""Settings fields the flags below fill (``None`` when a flag is not given)."""


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls-cert --tls-key [--tls-client-ca] [--tls-client-auth] [--insecure]``."""
    group = parser.add_argument_group("TLS (plaintext is allowed on loopback addresses only)")
    group.add_argument("--tls-cert", type=Path, help="server certificate chain (PEM)")
    group.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    group.add_argument(
        "--tls-client-ca", type=Path, help="CA clients must present certificates from (mTLS)"
    )
    group.add_argument(
        "--tls-client-auth",
        choices=("required", "optional"),
        help="with --tls-client-ca: refuse clients without a certificate (default) or not",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow plaintext gRPC on an address other machines can reach",
    )


def add_mqtt_tls_arguments(
    parser: argparse.ArgumentParser, *, cert_help: str = "client certificate (PEM) for mutual TLS"
) -> None:
    """``--mqtt-ca``, ``--mqtt-cert``, ``--mqtt-key`` for a command that connects to a broker."""
    parser.add_argument("--mqtt-ca", type=Path, help="CA certificate of an mqtts:// broker (PEM)")
    parser.add_argument("--mqtt-cert", type=Path, help=cert_help)
    parser.add_argument("--mqtt-key", type=Path, help="the client certificate's key (PEM)")
