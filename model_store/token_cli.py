"""``edgefabric token ...``: bearer tokens for the gateway, and tenant limits.

Tokens live in ``tokens.sqlite3`` under the store's home (hashed; see
:mod:`edgefabric.security.tokens`). Creating and revoking tokens and changing a tenant's
limits join the store's hash-chained audit log, as do the gateway's admin RPCs through
:func:`audit_recorder`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgefabric.errors import EdgefabricError
from edgefabric.security.audit import AuditRecorder
from edgefabric.security.limits import TenantLimits
from edgefabric.security.tokens import Role, TokenStore
from model_store.home import StoreHome
from model_store.store import ModelStore

__all__ = ["audit_recorder", "register"]


def audit_recorder(home: Path) -> AuditRecorder:
    """Append entries to the audit log of the store at ``home`` (under its write lock)."""

    def record(*, actor: str, action: str, subject: str, details: Mapping[str, Any]) -> None:
        store = ModelStore(StoreHome(home), actor=actor)
        try:
            with store.home.exclusive(), store.registry.transaction():
                store.record(action, subject, details)
        finally:
            store.close()

    return record


def _record(home: StoreHome, action: str, subject: str, details: Mapping[str, Any]) -> None:
    store = ModelStore(home)
    try:
        with home.exclusive(), store.registry.transaction():
            store.record(action, subject, details)
    finally:
        store.close()


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [list(headers), *[[str(cell) for cell in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _patterns(values: Sequence[str] | None) -> list[str]:
    return [item.strip() for value in values or () for item in value.split(",") if item.strip()]


def _create(home: StoreHome, args: argparse.Namespace) -> int:
    role = Role(args.role)
    token, info = TokenStore.in_home(home.root).create(role, _patterns(args.models), args.tenant)
    details = {"role": role.value, "models": list(info.models), "tenant": info.tenant}
    _record(home, "token.create", info.token_id, details)
    print(token)
    print(
        f"token {info.token_id} ({role.value}, tenant {info.tenant}"
        f"{', models ' + ','.join(info.models) if info.models else ''}): shown only now; "
        "send it as 'authorization: Bearer <token>'",
        file=sys.stderr,
    )
    return 0


def _list(home: StoreHome, args: argparse.Namespace) -> int:
    infos = TokenStore.in_home(home.root).tokens()
    rows = [
        [i.token_id, i.role.value, i.tenant, ",".join(i.models) or "*", i.created_at,
         i.revoked_at or "-"]
        for i in infos
        if args.all or i.revoked_at is None
    ]  # fmt: skip
    print(_table(["ID", "ROLE", "TENANT", "MODELS", "CREATED", "REVOKED"], rows))
    return 0


def _revoke(home: StoreHome, args: argparse.Namespace) -> int:
    info = TokenStore.in_home(home.root).revoke(args.token_id)
    _record(home, "token.revoke", info.token_id, {"tenant": info.tenant, "role": info.role.value})
    print(f"revoked token {info.token_id} (tenant {info.tenant})")
    return 0


def _limits(home: StoreHome, args: argparse.Namespace) -> int:
    store = TokenStore.in_home(home.root)
    if args.tenant is None:
        rows = [
            [name, f"{lim.rate_per_s:g}", lim.burst, lim.max_concurrent]
            for name, lim in sorted(store.tenant_limits().items())
        ]
        print(_table(["TENANT", "RATE/S", "BURST", "MAX-CONCURRENT"], rows))
        return 0
    limits = TenantLimits(args.rate_per_s, args.burst, args.max_concurrent)
    store.set_limits(args.tenant, limits)
    details = {"rate_per_s": limits.rate_per_s, "burst": limits.burst,
               "max_concurrent": limits.max_concurrent}  # fmt: skip
    _record(home, "tenant.limits", args.tenant, details)
    print(
        f"tenant {args.tenant}: {limits.rate_per_s:g} requests/s (burst {limits.burst}), "
        f"{limits.max_concurrent} in progress (0 = unlimited)"
    )
    return 0


def _handler(action: Any) -> Any:
    def handler(args: argparse.Namespace) -> int:
        try:
            return int(action(StoreHome.from_env(args.home), args))
        except (EdgefabricError, ValueError, FileNotFoundError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return handler


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``token`` command group."""
    group = commands.add_parser("token", help="bearer tokens for the gateway, tenant limits")
    group.add_argument("--home", type=Path, help="store home (default $EDGEFABRIC_HOME)")
    sub = group.add_subparsers(dest="action", required=True)

    create = sub.add_parser("create", help="create a token and print it once")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument(
        "--models",
        action="append",
        help="model names or globs the token may use, comma-separated or repeated "
        "(infer role; '*' for all)",
    )
    create.add_argument("--tenant", required=True, help="tenant the token's calls count against")
    create.set_defaults(handler=_handler(_create))

    listing = sub.add_parser("list", help="active tokens (never their secrets)")
    listing.add_argument("--all", action="store_true", help="include revoked tokens")
    listing.set_defaults(handler=_handler(_list))

    revoke = sub.add_parser("revoke", help="revoke a token by its id")
    revoke.add_argument("token_id", help="the id `token list` shows")
    revoke.set_defaults(handler=_handler(_revoke))

    limits = sub.add_parser("limits", help="show tenant limits, or set one tenant's")
    limits.add_argument("tenant", nargs="?", help="tenant to set (omit to list)")
    limits.add_argument("--rate-per-s", type=float, default=0.0, help="requests/s (0 = none)")
    limits.add_argument("--burst", type=int, default=0, help="token-bucket size")
    limits.add_argument(
        "--max-concurrent", type=int, default=0, help="calls in progress (0 = no quota)"
    )
    limits.set_defaults(handler=_handler(_limits))
