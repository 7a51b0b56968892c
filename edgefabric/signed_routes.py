"""The store's route table for gateways, signed by the controller key (docs/adr/0017).

The controller signs ``DOMAIN + RouteTable bytes`` with the ed25519 key that signs desired
state (:mod:`edgefabric.desired`; another domain string, so neither signature passes for the
other) and publishes the envelope retained on ``ef/v1/routes``. A gateway holding the public
half applies a table only when the signature verifies and its sequence is newer than the one
it applied. Routes travel as text in the ``--route`` syntax after ``MODEL=``; the gateway
parses them (:mod:`gateway.routing`), the kernel only carries them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from edgefabric.desired import check_newer, check_signature, sign
from edgefabric.errors import InvalidInputError
from edgefabric.wire.v1.routes_pb2 import RouteEntry, RouteTable, SignedRouteTable

__all__ = ["DOMAIN", "open_routes", "routes_of", "seal_routes"]

DOMAIN = b"edgefabric-routes-v1\x00"
_WHAT = "route table"


def seal_routes(
    routes: Mapping[str, str],
    sequence: int,
    private_key: Ed25519PrivateKey,
    *,
    issued_at_ms: int | None = None,
) -> bytes:
    """The signed envelope of ``routes`` (model -> route text) to publish on ``ef/v1/routes``."""
    if sequence < 1:
        raise ValueError(f"a route table's sequence starts at 1, got {sequence}")
    table = RouteTable(
        sequence=sequence,
        issued_at_ms=int(time.time() * 1000) if issued_at_ms is None else issued_at_ms,
        routes=[RouteEntry(model=m, spec=routes[m]) for m in sorted(routes)],
    )
    body = table.SerializeToString(deterministic=True)
    signer, signature = sign(body, private_key, domain=DOMAIN)
    return SignedRouteTable(table=body, key_id=signer, signature=signature).SerializeToString()


def open_routes(
    payload: bytes, *, public_key: Ed25519PublicKey, applied_sequence: int
) -> RouteTable:
    """The table inside ``payload`` if a gateway should apply it.

    InvalidInputError says why not: garbage, unsigned or signed by another key, a model given
    twice, or a sequence not newer than ``applied_sequence`` (a replay or a rollback).
    """
    try:
        envelope = SignedRouteTable.FromString(payload)
        table = RouteTable.FromString(envelope.table)
    except DecodeError as exc:
        raise InvalidInputError(f"{_WHAT} is not a SignedRouteTable: {exc}") from None
    check_signature(
        _WHAT, envelope.table, envelope.signature, envelope.key_id, public_key, domain=DOMAIN
    )
    check_newer(_WHAT, table.sequence, applied_sequence)
    routes_of(table)  # a model given twice
    return table


def routes_of(table: RouteTable) -> dict[str, str]:
    """model -> route text; InvalidInputError when a model appears twice."""
    routes: dict[str, str] = {}
    for entry in table.routes:
        if entry.model in routes:
            raise InvalidInputError(
                f"{_WHAT} {table.sequence} gives model {entry.model!r} twice; refusing it"
            )
        routes[entry.model] = entry.spec
    return routes
