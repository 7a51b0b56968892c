"""The fleet's certificate authority: who may connect to the MQTT broker, and as whom.

The store keeps a small CA (ECDSA P-256, ``cryptography``) that issues one client certificate per
identity. The broker takes the certificate's Common Name as the MQTT username
(``use_identity_as_username``), so the name in the certificate is what the ACL grants topics to.

Layout of ``folder`` (mode 0700; ``StoreHome.pki``)::

    ca.key                    the CA's PKCS8 private key, unencrypted, mode 0600
    ca.pem                    the CA certificate every party trusts
    identities.json           every certificate issued, and which are revoked (the commit point)
    issued/<serial>.pem       each certificate issued (the private keys are not kept)
    crl.pem                   the revocation list, re-signed on every change

Private keys of devices and services are handed out once (:class:`Credentials`) and never
stored here. Every file is written atomically; the caller serialises writers (the CLI holds the
store's lock).
"""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefabric.errors import ConflictError, SigningKeyError, StoreError
from edgefabric.files import write_atomic

__all__ = [
    "BROKER_IDENTITY",
    "Credentials",
    "FleetCA",
    "Identity",
    "Role",
    "check_identity_name",
]

BROKER_IDENTITY = "edgefabric-broker"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # the agent's device id rule
_INDEX_FORMAT = 1
_CA_DAYS = 3650
_CRL_DAYS = 365  # the broker refuses every client once the CRL it holds has expired
_ORGANISATION = "edgefabric"


class Role(enum.StrEnum):
    """What an identity may do on the broker (see ``model_store.enroll`` for the ACL)."""

    DEVICE = "device"
    CONTROLLER = "controller"
    GATEWAY = "gateway"
    BROKER = "broker"


@dataclass(frozen=True)
class Identity:
    """One issued certificate."""

    name: str
    role: Role
    serial: int
    issued_at: datetime
    not_after: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        """Not revoked (expiry is the broker's to check)."""
        return self.revoked_at is None

    def to_json(self) -> dict[str, Any]:
        """The record in ``identities.json``."""
        return {
            "name": self.name,
            "role": self.role.value,
            "serial": f"{self.serial:x}",
            "issued_at": self.issued_at.isoformat(),
            "not_after": self.not_after.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Identity:
        """Parse a record; KeyError/ValueError/TypeError when it is malformed."""
        revoked = record.get("revoked_at")
        return cls(
            name=str(record["name"]),
            role=Role(record["role"]),
            serial=int(record["serial"], 16),
            issued_at=datetime.fromisoformat(record["issued_at"]),
            not_after=datetime.fromisoformat(record["not_after"]),
            revoked_at=datetime.fromisoformat(revoked) if revoked else None,
        )


@dataclass(frozen=True)
class Credentials:
    """A freshly issued key and certificate, with the CA certificate to trust."""

    identity: Identity
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes

    def write(self, folder: Path) -> dict[str, Path]:
        """Write ``key.pem`` (mode 0600), ``cert.pem`` and ``ca.pem`` into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        files = {"key": folder / "key.pem", "cert": folder / "cert.pem", "ca": folder / "ca.pem"}
        write_atomic(files["key"], self.key_pem, mode=0o600)
        write_atomic(files["cert"], self.cert_pem)
        write_atomic(files["ca"], self.ca_pem)
        return files


def check_identity_name(name: str) -> str:
    """``name`` if it can be a certificate CN, an MQTT username and a topic level; else
    ValueError saying what is allowed."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"identity {name!r} is not allowed: use 1-128 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit (the device id rule)"
        )
    return name


def _now() -> datetime:
    return datetime.now(UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANISATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _subject_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses for a server certificate's subjectAltName."""
    result: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})", name):
                raise ValueError(
                    f"broker name {name!r} is neither an IP address nor a DNS name"
                ) from None
            result.append(x509.DNSName(name))
    return result


class FleetCA:
    """The store's certificate authority on disk; :meth:`open` creates it on first use."""

    def __init__(
        self,
        folder: Path,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        identities: list[Identity],
        *,
        crl_number: int,
        clock: Callable[[], datetime],
    ) -> None:
        self.folder = folder
        self._key = key
        self._certificate = certificate
        self._identities = identities
        self._crl_number = crl_number
        self._clock = clock

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, folder: Path, *, clock: Callable[[], datetime] = _now) -> FleetCA:
        """Load the CA in ``folder``, creating a new one there if it holds none."""
        if not (folder / "ca.key").exists():
            return cls._create(folder, clock)
        try:
            key = serialization.load_pem_private_key(
                (folder / "ca.key").read_bytes(), password=None
            )
            certificate = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
            index = json.loads((folder / "identities.json").read_bytes())
            identities = [Identity.from_json(record) for record in index["identities"]]
            crl_number = int(index["crl_number"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SigningKeyError(
                f"the fleet CA in {folder} is unreadable ({exc}); restore the folder from a "
                "backup (a new CA would have to re-enroll every device)"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise SigningKeyError(f"{folder / 'ca.key'} is not an ECDSA key")
        return cls(folder, key, certificate, identities, crl_number=crl_number, clock=clock)

    @classmethod
    def _create(cls, folder: Path, clock: Callable[[], datetime]) -> FleetCA:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
        key = _new_key()
        now = clock()
        subject = _name(f"edgefabric fleet CA {now:%Y-%m-%d}", "fleet-ca")
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        write_atomic(folder / "ca.key", _key_pem(key), mode=0o600)
        write_atomic(folder / "ca.pem", certificate.public_bytes(serialization.Encoding.PEM))
        ca = cls(folder, key, certificate, [], crl_number=1, clock=clock)
        ca._commit()
        return ca

    # ------------------------------------------------------------------ queries

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate (PEM), for every party's trust store."""
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def crl_path(self) -> Path:
        """The current revocation list (PEM)."""
        return self.folder / "crl.pem"

    def identities(self, role: Role | None = None, *, active_only: bool = False) -> list[Identity]:
        """Issued certificates, oldest first; optionally one role's, optionally unrevoked."""
        return [
            identity
            for identity in self._identities
            if (role is None or identity.role is role) and (identity.active or not active_only)
        ]

    # ------------------------------------------------------------------ changes

    def issue(
        self, name: str, role: Role, *, days: int = 365, replace: bool = False
    ) -> Credentials:
        """A new key and client certificate with CN ``name`` for ``role``.

        Raises ConflictError if ``name`` belongs to another role, or already holds an unrevoked
        certificate and ``replace`` is false (with ``replace`` those are revoked).
        """
        check_identity_name(name)
        if role is Role.BROKER:
            raise ValueError("the broker's certificate comes from issue_broker(), not issue()")
        self._check_name_free(name, role, replace=replace)
        key = _new_key()
        builder = self._leaf(name, role, key, days).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        return self._record(name, role, key, builder, replace=True)

    def issue_broker(self, names: Sequence[str] = (), *, days: int = 365) -> Credentials:
        """A server certificate for the MQTT broker, valid for 127.0.0.1, ::1, localhost and
        ``names`` (DNS names or IP addresses); earlier broker certificates are revoked."""
        alt_names = _subject_names(["127.0.0.1", "::1", "localhost", *names])
        key = _new_key()
        builder = (
            self._leaf(BROKER_IDENTITY, Role.BROKER, key, days)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        )
        return self._record(BROKER_IDENTITY, Role.BROKER, key, builder, replace=True)

    def revoke(self, name: str) -> list[Identity]:
        """Revoke every unrevoked certificate of ``name`` and re-sign the CRL.

        Raises StoreError if ``name`` holds no unrevoked certificate.
        """
        now = self._clock()
        revoked = self._revoke_active(name, now)
        if not revoked:
            known = "was never enrolled" if not self.identities_named(name) else "is revoked"
            raise StoreError(
                f"cannot revoke {name!r}: it {known}; `edgefabric fleet identities` lists "
                "the enrolled names"
            )
        self._commit()
        return revoked

    def identities_named(self, name: str) -> list[Identity]:
        """Every certificate ever issued to ``name``."""
        return [identity for identity in self._identities if identity.name == name]

    def refresh_crl(self) -> Path:
        """Re-sign the CRL (its next update a year away); the path of the file."""
        self._commit()
        return self.crl_path

    # ------------------------------------------------------------------ internals

    def _check_name_free(self, name: str, role: Role, *, replace: bool) -> None:
        earlier = self.identities_named(name)
        other_roles = {identity.role for identity in earlier} - {role}
        if other_roles:
            taken = ", ".join(sorted(r.value for r in other_roles))
            raise ConflictError(
                f"{name!r} is already enrolled as {taken}, not {role.value}; choose another name"
            )
        if not replace and any(identity.active for identity in earlier):
            raise ConflictError(
                f"{name!r} already holds a valid certificate; pass --replace to issue a new one "
                "and revoke the old, or `edgefabric fleet revoke` it first"
            )

    def _leaf(
        self, name: str, role: Role, key: ec.EllipticCurvePrivateKey, days: int
    ) -> x509.CertificateBuilder:
        if days < 1:
            raise ValueError(f"a certificate must be valid for at least 1 day, got {days}")
        now = self._clock()
        public = key.public_key()
        return (
            x509.CertificateBuilder()
            .subject_name(_name(name, role.value))
            .issuer_name(self._certificate.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )

    def _record(
        self,
        name: str,
        role: Role,
        key: ec.EllipticCurvePrivateKey,
        builder: x509.CertificateBuilder,
        *,
        replace: bool,
    ) -> Credentials:
        certificate = builder.sign(self._key, hashes.SHA256())
        cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
        write_atomic(self.folder / "issued" / f"{certificate.serial_number:x}.pem", cert_pem)
        now = self._clock()
        if replace:
            self._revoke_active(name, now)
        identity = Identity(
            name=name,
            role=role,
            serial=certificate.serial_number,
            issued_at=now,
            not_after=certificate.not_valid_after_utc,
        )
        self._identities.append(identity)
        self._commit()
        return Credentials(identity, _key_pem(key), cert_pem, self.ca_pem)

    def _revoke_active(self, name: str, now: datetime) -> list[Identity]:
        revoked = []
        for index, identity in enumerate(self._identities):
            if identity.name == name and identity.active:
                self._identities[index] = Identity(
                    identity.name,
                    identity.role,
                    identity.serial,
                    identity.issued_at,
                    identity.not_after,
                    revoked_at=now,
                )
                revoked.append(self._identities[index])
        return revoked

    def _commit(self) -> None:
        """Write the index (the commit point), then a freshly signed CRL matching it."""
        number = self._crl_number
        index = {
            "format": _INDEX_FORMAT,
            "crl_number": number + 1,
            "identities": [identity.to_json() for identity in self._identities],
        }
        data = json.dumps(index, indent=2, sort_keys=True).encode() + b"\n"
        write_atomic(self.folder / "identities.json", data, mode=0o600)
        self._crl_number = number + 1
        now = self._clock()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._certificate.subject)
            .last_update(now - timedelta(minutes=5))
            .next_update(now + timedelta(days=_CRL_DAYS))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        )
        for identity in self._identities:
            if identity.revoked_at is not None:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(identity.serial)
                    .revocation_date(identity.revoked_at)
                    .build()
                )
        crl = builder.sign(self._key, hashes.SHA256())
        write_atomic(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))
