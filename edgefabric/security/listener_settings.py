"""TLS settings of a gRPC listener, shared by the gateway and the agent's local API."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings

from edgefabric.security.tls import ServerTls

__all__ = ["ListenerTlsSettings"]


class ListenerTlsSettings(BaseSettings):
    """``tls_*`` fields and the plaintext opt-in; a component's settings class inherits them
    (with its own env prefix) and checks exposure against its own bind address."""

    tls_cert: Path | None = Field(
        None, description="Server certificate chain (PEM) of the gRPC API; with tls_key: TLS."
    )
    tls_key: Path | None = Field(None, description="The server certificate's private key (PEM).")
    tls_client_ca: Path | None = Field(
        None, description="CA (PEM) whose certificates clients must present: mutual TLS."
    )
    tls_client_auth: Literal["required", "optional"] = Field(
        "required",
        description="With tls_client_ca: 'required' refuses clients without a certificate; "
        "'optional' checks one only when a client presents it.",
    )
    insecure: bool = Field(
        False, description="Allow plaintext gRPC on an address other machines can reach."
    )

    def server_tls(self) -> ServerTls | None:
        """The TLS configuration, read from the PEM files (``None``: plaintext)."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        return ServerTls.from_files(
            self.tls_cert,
            self.tls_key,
            self.tls_client_ca,
            require_client_cert=self.tls_client_auth == "required" if self.tls_client_ca else None,
        )

    @model_validator(mode="after")
    def _listener_tls_is_complete(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key (--tls-cert and --tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key too")
        self.server_tls()  # refuses unreadable or mismatched PEM files now
        return self
