"""The store's ed25519 signing keys, one set per TUF role, kept as files on disk.

Layout of ``keys_dir`` (mode 0700)::

    keyring.json                    thresholds and key ids per role (the commit point)
    <role>.<keyid>.pem              PKCS8 private key, unencrypted, mode 0600
    retired/<role>.<keyid>.pem      keys replaced by a rotation; kept, never deleted

Every file is written atomically (temporary file in the same directory, fsync, ``os.replace``)
so a crash leaves either the old or the new keyring, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

# securesystemslib re-exports these without __all__; mypy --strict needs the ignore.
from securesystemslib.signer import (  # type: ignore[attr-defined]
    CryptoSigner,
    Key,
    Signer,
    SSlibKey,
)

from edgefabric.errors import ConflictError, SigningKeyError, StoreError
from edgefabric.files import fsync_dir, write_atomic

__all__ = ["ROLES", "Keyring"]

ROLES: tuple[str, ...] = ("root", "targets", "snapshot", "timestamp")

_KEYRING_FILE = "keyring.json"
_RETIRED_DIR = "retired"
_KEYRING_FORMAT = 1
_INIT_HINT = "run `edgefabric keys init` to create a new keyring"


def _key_file_name(role: str, keyid: str) -> str:
    return f"{role}.{keyid}.pem"


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown TUF role {role!r}; expected one of {', '.join(ROLES)}")


def _new_signer() -> CryptoSigner:
    return CryptoSigner.generate_ed25519()


def _load_signer(path: Path, keyid: str) -> CryptoSigner:
    """Read one PEM key and check it is the ed25519 key ``keyid``; ValueError/OSError if not."""
    private_key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private_key, Ed25519PrivateKey):
        raise ValueError(f"{path.name} is not an ed25519 key")
    public_key = SSlibKey.from_crypto(private_key.public_key(), scheme="ed25519")
    if public_key.keyid != keyid:
        raise ValueError(f"{path.name} holds key {public_key.keyid}, keyring.json says {keyid}")
    return CryptoSigner(private_key, public_key)


def _validated_thresholds(thresholds: Mapping[str, int] | None) -> dict[str, int]:
    chosen = dict.fromkeys(ROLES, 1)
    for role, threshold in (thresholds or {}).items():
        if role not in ROLES:
            raise StoreError(f"unknown TUF role {role!r}; expected one of {', '.join(ROLES)}")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise StoreError(
                f"threshold of role {role!r} must be an integer >= 1, got {threshold!r}"
            )
        chosen[role] = threshold
    return chosen


class Keyring:
    """The store's signing keys on disk: one PEM (PKCS8, unencrypted) per key, files mode 0600,
    directory 0700. Build one with :meth:`create` or :meth:`load`."""

    def __init__(
        self,
        keys_dir: Path,
        signers: Mapping[str, list[CryptoSigner]],
        thresholds: Mapping[str, int],
    ) -> None:
        self.keys_dir = keys_dir
        self._signers = {role: list(signers[role]) for role in ROLES}
        self._thresholds = {role: thresholds[role] for role in ROLES}

    @classmethod
    def create(cls, keys_dir: Path, thresholds: Mapping[str, int] | None = None) -> Keyring:
        """Generate threshold-many ed25519 keys per role (default 1 each).

        Raises ConflictError if ``keys_dir`` already holds a keyring or key files.
        """
        chosen = _validated_thresholds(thresholds)
        if keys_dir.exists() and (
            (keys_dir / _KEYRING_FILE).exists() or any(keys_dir.glob("*.pem"))
        ):
            raise ConflictError(
                f"{keys_dir} already holds signing keys; refusing to overwrite them "
                "(load them instead, or choose an empty directory)"
            )
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys_dir.chmod(0o700)
        signers = {role: [_new_signer() for _ in range(chosen[role])] for role in ROLES}
        keyring = cls(keys_dir, signers, chosen)
        for role in ROLES:
            for signer in signers[role]:
                keyring._write_key(role, signer)
        keyring._write_index()
        return keyring

    @classmethod
    def load(cls, keys_dir: Path) -> Keyring:
        """Read the keyring; SigningKeyError when it is missing, unreadable or below threshold."""
        index_path = keys_dir / _KEYRING_FILE
        try:
            index: Any = json.loads(index_path.read_bytes())
            roles = index["roles"]
            listed = {role: [str(k) for k in roles[role]["keyids"]] for role in ROLES}
            thresholds = {role: int(roles[role]["threshold"]) for role in ROLES}
        except FileNotFoundError:
            raise SigningKeyError(f"no signing keys in {keys_dir}: {_INIT_HINT}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SigningKeyError(
                f"cannot read {index_path} ({exc}); restore it from a backup or {_INIT_HINT}"
            ) from None
        signers: dict[str, list[CryptoSigner]] = {}
        for role in ROLES:
            usable: list[CryptoSigner] = []
            problems: list[str] = []
            for keyid in listed[role]:
                path = keys_dir / _key_file_name(role, keyid)
                try:
                    usable.append(_load_signer(path, keyid))
                except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
                    problems.append(f"{path.name}: {exc}")
            if len(usable) < thresholds[role]:
                detail = "; ".join(problems) or "no keys listed"
                raise SigningKeyError(
                    f"role {role!r} needs {thresholds[role]} signing key(s), {len(usable)} "
                    f"usable in {keys_dir} ({detail}); restore the key files or {_INIT_HINT}"
                )
            signers[role] = usable
        return cls(keys_dir, signers, thresholds)

    def signers(self, role: str) -> list[Signer]:
        """The role's signers (at least its threshold many)."""
        _check_role(role)
        return list(self._signers[role])

    def public_keys(self, role: str) -> list[Key]:
        """The role's public keys, as TUF root metadata lists them."""
        _check_role(role)
        return [signer.public_key for signer in self._signers[role]]

    def threshold(self, role: str) -> int:
        """How many of the role's keys must sign its metadata."""
        _check_role(role)
        return self._thresholds[role]

    def replace_keys(self, role: str) -> tuple[list[Signer], list[Signer]]:
        """Generate a fresh set of keys for ``role`` (same count) and return (old, new) signers.

        New key files are written first, then ``keyring.json`` (the commit point), then the old
        files move to ``retired/``; they are kept, never deleted.
        """
        _check_role(role)
        old = self._signers[role]
        new = [_new_signer() for _ in old]
        for signer in new:
            self._write_key(role, signer)
        self._signers[role] = new
        try:
            self._write_index()
        except BaseException:
            self._signers[role] = old
            raise
        retired = self.keys_dir / _RETIRED_DIR
        retired.mkdir(mode=0o700, exist_ok=True)
        for signer in old:
            name = _key_file_name(role, signer.public_key.keyid)
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.keys_dir / name, retired / name)
        fsync_dir(retired)
        fsync_dir(self.keys_dir)
        old_signers: list[Signer] = list(old)
        new_signers: list[Signer] = list(new)
        return old_signers, new_signers

    def _write_key(self, role: str, signer: CryptoSigner) -> None:
        path = self.keys_dir / _key_file_name(role, signer.public_key.keyid)
        write_atomic(path, signer.private_bytes, mode=0o600)

    def _write_index(self) -> None:
        index = {
            "format": _KEYRING_FORMAT,
            "roles": {
                role: {
                    "threshold": self._thresholds[role],
                    "keyids": [s.public_key.keyid for s in self._signers[role]],
                }
                for role in ROLES
            },
        }
        data = json.dumps(index, indent=2, sort_keys=True).encode() + b"\n"
        write_atomic(self.keys_dir / _KEYRING_FILE, data, mode=0o600)
