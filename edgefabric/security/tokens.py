"""Bearer tokens with roles and tenants, stored hashed in ``tokens.sqlite3`` under the home.

A token reads ``eft_<id>_<secret>``: ``id`` (12 hex digits) names the row, ``secret`` is 32
random bytes in URL-safe base64. Only the secret's SHA-256 is stored, and a presented secret
is compared in constant time, so a copy of the file lets nobody call the gateway. The token
itself is shown once, when it is created.

Roles: ``infer`` may call the inference API (inference, metadata, config, statistics, index)
for models whose names match one of its glob patterns; ``admin`` may do everything, including
repository load/unload and any administrative service. Each token belongs to a tenant, the
unit that rate limits and concurrency quotas apply to.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from fnmatch import fnmatchcase
from pathlib import Path

from edgefabric.errors import UnauthenticatedError
from edgefabric.security.limits import TenantLimits

__all__ = [
    "TOKENS_FILENAME",
    "Principal",
    "Role",
    "TokenInfo",
    "TokenStore",
    "TokenVerifier",
    "check_tenant_name",
]

TOKENS_FILENAME = "tokens.sqlite3"
_PREFIX = "eft"
_TOKEN = re.compile(r"^eft_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    role TEXT NOT NULL,
    models TEXT NOT NULL,
    tenant TEXT NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    rate_per_s REAL NOT NULL,
    burst INTEGER NOT NULL,
    max_concurrent INTEGER NOT NULL
);
"""


class Role(StrEnum):
    """What a token may do."""

    INFER = "infer"
    ADMIN = "admin"


def check_tenant_name(name: str) -> str:
    """``name`` if it is a valid tenant name, else ``ValueError`` saying what is allowed."""
    if not _TENANT.match(name):
        raise ValueError(
            f"tenant {name!r}: expected 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_patterns(role: Role, models: Sequence[str]) -> tuple[str, ...]:
    patterns = tuple(models)
    for pattern in patterns:
        if not pattern or pattern != pattern.strip() or any(c.isspace() for c in pattern):
            raise ValueError(
                f"model pattern {pattern!r}: expected a model name or glob such as 'vision/*' "
                "without spaces"
            )
    if role is Role.INFER and not patterns:
        raise ValueError(
            "an infer token needs the models it may use: give --models PATTERN "
            "(a glob such as 'vision/*', or '*' for every model)"
        )
    return patterns


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id, tenant, role and model patterns."""

    token_id: str
    tenant: str
    role: Role
    models: tuple[str, ...] = ()

    @property
    def is_admin(self) -> bool:
        """Whether this caller may use administrative RPCs."""
        return self.role is Role.ADMIN

    def may_use(self, model: str) -> bool:
        """Whether this caller may infer with (or inspect) ``model``."""
        return self.is_admin or any(fnmatchcase(model, pattern) for pattern in self.models)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token, without its secret."""

    token_id: str
    role: Role
    models: tuple[str, ...]
    tenant: str
    created_at: str
    revoked_at: str | None = None

    @property
    def principal(self) -> Principal:
        """The caller this token authenticates as."""
        return Principal(self.token_id, self.tenant, self.role, self.models)


@dataclass(frozen=True)
class _Snapshot:
    hashes: dict[str, tuple[str, Principal]] = field(default_factory=dict)
    limits: dict[str, TenantLimits] = field(default_factory=dict)


class TokenStore:
    """The token file (SQLite, mode 0600). Every method opens and closes its connection."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_home(cls, home: Path) -> TokenStore:
        """The store's token file under ``home`` (``EDGEFABRIC_HOME``)."""
        return cls(home / TOKENS_FILENAME)

    @contextlib.contextmanager
    def _connect(self, *, create: bool) -> Iterator[sqlite3.Connection]:
        if not create and not self.path.exists():
            raise FileNotFoundError(
                f"{self.path}: no token store here; create a token first with "
                "`edgefabric token create` (with the same EDGEFABRIC_HOME or --home)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if create and not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.executescript(_SCHEMA)
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    def create(self, role: Role, models: Sequence[str], tenant: str) -> tuple[str, TokenInfo]:
        """A new token (the only time its secret exists outside the caller) and its record."""
        patterns = _check_patterns(role, models)
        check_tenant_name(tenant)
        token_id = secrets.token_hex(6)
        secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._connect(create=True) as db:
            db.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (token_id, _digest(secret), role.value, json.dumps(patterns), tenant, now),
            )
        return f"{_PREFIX}_{token_id}_{secret}", TokenInfo(token_id, role, patterns, tenant, now)

    def tokens(self) -> list[TokenInfo]:
        """Every token, revoked ones included, oldest first."""
        if not self.path.exists():
            return []
        with self._connect(create=False) as db:
            rows = db.execute(
                "SELECT id, role, models, tenant, created_at, revoked_at FROM tokens ORDER BY rowid"
            ).fetchall()
        return [
            TokenInfo(row[0], Role(row[1]), tuple(json.loads(row[2])), row[3], row[4], row[5])
            for row in rows
        ]

    def revoke(self, token_id: str) -> TokenInfo:
        """Revoke ``token_id`` (``ValueError`` when there is no such token or it is revoked)."""
        now = datetime.now(UTC).isoformat(timespec="seconds")
        with self._connect(create=False) as db:
            changed = db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, token_id),
            ).rowcount
        known = {info.token_id: info for info in self.tokens()}
        if not changed:
            state = "is already revoked" if token_id in known else "is not a token id"
            raise ValueError(
                f"{token_id!r} {state}; `edgefabric token list` shows the ids of active tokens"
            )
        return known[token_id]

    def set_limits(self, tenant: str, limits: TenantLimits) -> None:
        """Set ``tenant``'s rate limit and concurrency quota."""
        check_tenant_name(tenant)
        with self._connect(create=True) as db:
            db.execute(
                "INSERT INTO tenants VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                "rate_per_s = excluded.rate_per_s, burst = excluded.burst, "
                "max_concurrent = excluded.max_concurrent",
                (tenant, limits.rate_per_s, limits.burst, limits.max_concurrent),
            )

    def tenant_limits(self) -> dict[str, TenantLimits]:
        """Every tenant's configured limits."""
        if not self.path.exists():
            return {}
        with self._connect(create=False) as db:
            rows = db.execute("SELECT name, rate_per_s, burst, max_concurrent FROM tenants")
            return {name: TenantLimits(rate, burst, conc) for name, rate, burst, conc in rows}

    def _snapshot(self) -> _Snapshot:
        with self._connect(create=False) as db:
            rows = db.execute(
                "SELECT id, secret_sha256, role, models, tenant FROM tokens "
                "WHERE revoked_at IS NULL"
            ).fetchall()
            limits = db.execute("SELECT name, rate_per_s, burst, max_concurrent FROM tenants")
            tenants = {name: TenantLimits(rate, burst, conc) for name, rate, burst, conc in limits}
        hashes = {
            row[0]: (row[1], Principal(row[0], row[4], Role(row[2]), tuple(json.loads(row[3]))))
            for row in rows
        }
        return _Snapshot(hashes, tenants)


class TokenVerifier:
    """Checks ``authorization`` metadata against a :class:`TokenStore`.

    The store is read again whenever its file changes (checked with one ``stat`` per call), so
    a token created or revoked with the CLI takes effect on the next call without a restart.
    """

    def __init__(self, store: TokenStore) -> None:
        self.store = store
        self._stamp: tuple[int, int, int] | None = None
        self._snapshot = _Snapshot()
        self.generation = 0
        self._refresh()

    def _refresh(self) -> None:
        try:
            info = os.stat(self.store.path)
            stamp: tuple[int, int, int] | None = (info.st_mtime_ns, info.st_size, info.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp or self.generation == 0:
            self._snapshot = self.store._snapshot() if stamp is not None else _Snapshot()
            self._stamp = stamp
            self.generation += 1

    @property
    def tenant_limits(self) -> dict[str, TenantLimits]:
        """Tenant limits as last read from the store."""
        return self._snapshot.limits

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller that ``authorization`` (``Bearer eft_...``) proves, or
        :class:`UnauthenticatedError`."""
        if not authorization:
            raise UnauthenticatedError(
                "this server requires a token: send the metadata 'authorization: Bearer <token>'"
            )
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise UnauthenticatedError(
                f"authorization metadata must be 'Bearer <token>', got a {scheme!r} credential"
            )
        match = _TOKEN.match(token.strip())
        if match is None:
            raise UnauthenticatedError(
                "the bearer token is malformed: expected eft_<12 hex digits>_<43 characters>, "
                "as printed by `edgefabric token create`"
            )
        self._refresh()
        token_id, secret = match.groups()
        entry = self._snapshot.hashes.get(token_id)
        # Compare against a dummy digest for unknown ids too, so timing tells nothing.
        expected, principal = entry if entry is not None else ("0" * 64, None)
        if not hmac.compare_digest(expected, _digest(secret)) or principal is None:
            raise UnauthenticatedError(
                f"token {token_id} is unknown or revoked; ask an admin for a new one"
            )
        return principal
