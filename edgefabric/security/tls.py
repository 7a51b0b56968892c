"""TLS for every gRPC listener (and the dashboard's HTTPS), and the rule that plaintext stays
on loopback.

Certificates and keys are PEM files. They are parsed with ``cryptography`` when loaded, so a
wrong file (a key given as the certificate, a key that does not match its certificate, an
empty client CA) is refused with the file's name before any socket is opened, instead of as
gRPC's opaque handshake failure later.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "ServerTls",
    "check_exposure",
    "client_credentials",
    "https_context",
    "is_loopback",
]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path}: is a folder, expected a PEM file") from None
    except PermissionError:
        raise ValueError(f"{what} {path}: not readable by this user") from None


def _certificates(data: bytes, path: Path, what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ValueError(
            f"{what} {path}: expected PEM certificates (-----BEGIN CERTIFICATE-----), "
            "found none; give the certificate file, not the key"
        )
    return certificates


def _public_bytes(key: object) -> bytes:
    public_bytes = getattr(key, "public_bytes", None)
    if public_bytes is None:
        return b""
    result: bytes = public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return result


def _check_key_pair(cert: bytes, cert_path: Path, key: bytes, key_path: Path) -> None:
    leaf = _certificates(cert, cert_path, "TLS certificate")[0]
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"TLS key {key_path}: expected an unencrypted PEM private key ({exc}); "
            "give the key file that belongs to the certificate"
        ) from None
    if _public_bytes(private_key.public_key()) != _public_bytes(leaf.public_key()):
        raise ValueError(
            f"TLS key {key_path} does not belong to certificate {cert_path} "
            f"(subject {leaf.subject.rfc4514_string()}); give the matching pair"
        )


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A server's certificate chain and key (PEM), and the CA its clients must present.

    ``require_client_cert``: refuse clients without a certificate signed by ``client_ca``
    (mutual TLS). ``None`` means "when a client CA is given".
    """

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None
    require_client_cert: bool | None = None

    def __post_init__(self) -> None:
        if self.require_client_cert and self.client_ca is None:
            raise ValueError(
                "requiring client certificates needs a client CA to check them against; "
                "give --tls-client-ca FILE"
            )

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate."""
        if self.require_client_cert is None:
            return self.client_ca is not None
        return self.require_client_cert

    @classmethod
    def from_files(
        cls,
        cert: Path,
        key: Path,
        client_ca: Path | None = None,
        *,
        require_client_cert: bool | None = None,
    ) -> ServerTls:
        """Read and check the PEM files (``ValueError`` names the file and the problem)."""
        cert_bytes = _read(cert, "TLS certificate")
        key_bytes = _read(key, "TLS key")
        _check_key_pair(cert_bytes, cert, key_bytes, key)
        ca_bytes = None
        if client_ca is not None:
            ca_bytes = _read(client_ca, "TLS client CA")
            _certificates(ca_bytes, client_ca, "TLS client CA")
        return cls(cert_bytes, key_bytes, ca_bytes, require_client_cert)

    def credentials(self) -> grpc.ServerCredentials:
        """gRPC server credentials for ``add_secure_port``."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.mutual,
        )


def client_credentials(
    root_ca: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Channel credentials for calling a TLS server: ``root_ca`` verifies the server (system
    roots when ``None``); ``cert`` and ``key`` (both or neither) identify this client."""
    if (cert is None) != (key is None):
        raise ValueError("a client certificate needs its key and a key its certificate; give both")
    root = _read(root_ca, "TLS CA") if root_ca is not None else None
    if root is not None and root_ca is not None:
        _certificates(root, root_ca, "TLS CA")
    chain = private = None
    if cert is not None and key is not None:
        chain, private = _read(cert, "TLS certificate"), _read(key, "TLS key")
        _check_key_pair(chain, cert, private, key)
    return grpc.ssl_channel_credentials(root, private, chain)


def https_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """A server-side ``ssl`` context for an HTTPS listener (TLS 1.2 or later).

    The files are checked like :meth:`ServerTls.from_files` first, so a wrong file is named
    before any socket is opened. With ``client_ca``, clients must present a certificate it
    signed (mutual TLS).
    """
    checked = ServerTls.from_files(cert, key, client_ca)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if checked.client_ca is not None:
        context.load_verify_locations(cadata=checked.client_ca.decode("ascii", "replace"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP literal or ``localhost``) only reaches this machine."""
    host = address.strip().removeprefix("[").removesuffix("]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or a wildcard: assume it is reachable from elsewhere


def check_exposure(address: str, *, tls: bool, insecure: bool) -> None:
    """Refuse plaintext on an address other machines can reach, unless ``insecure``."""
    if tls or insecure or is_loopback(address):
        return
    raise ValueError(
        f"refusing to serve plaintext gRPC on {address!r}, which other machines can reach: "
        "give --tls-cert and --tls-key (and --tls-client-ca for mutual TLS), bind a loopback "
        "address, or pass --insecure to accept plaintext on the network"
    )
