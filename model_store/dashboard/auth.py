"""Who may read the dashboard, and where it may listen.

``store serve --auth required`` guards the API with the gateway's bearer tokens
(``tokens.sqlite3`` in the store home): no or a bad token is 401, a valid token without the
``admin`` role is 403. Without it the dashboard shows the fleet to anyone who can connect, so
it stays on loopback unless ``--insecure`` says otherwise; tokens are not accepted in plaintext
on the network either (ADR 0016).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from edgefabric.errors import PermissionDeniedError
from edgefabric.security.tls import is_loopback
from edgefabric.security.tokens import TokenVerifier
from model_store.dashboard.server import Authorize

__all__ = ["check_dashboard_exposure", "require_admin"]


def require_admin(verifier: TokenVerifier) -> Authorize:
    """An :data:`Authorize` hook admitting requests with an admin token.

    Raises ``UnauthenticatedError`` (401) for a missing, malformed, unknown or revoked token
    and ``PermissionDeniedError`` (403) for a valid token of another role.
    """
    lock = threading.Lock()  # the verifier re-reads its file lazily; one reader at a time

    def authorize(headers: Mapping[str, str]) -> bool:
        with lock:
            principal = verifier.authenticate(headers.get("authorization"))
        if not principal.is_admin:
            raise PermissionDeniedError(
                f"the dashboard needs the admin role; token {principal.token_id} (tenant "
                f"{principal.tenant!r}) has the {principal.role.value} role: use a token made "
                "with `edgefabric token create --role admin`"
            )
        return True

    return authorize


def check_dashboard_exposure(address: str, *, auth: bool, tls: bool, insecure: bool) -> None:
    """Refuse (``ValueError``) a dashboard other machines can reach without authentication, or
    that would take bearer tokens in plaintext from the network, unless ``insecure``."""
    if insecure or is_loopback(address):
        return
    if not auth:
        raise ValueError(
            f"refusing to serve the fleet dashboard without authentication on {address!r}, "
            "which other machines can reach: pass --auth required (admin tokens from "
            "`edgefabric token create --role admin`) with --tls-cert and --tls-key, bind a "
            "loopback --http-address, or pass --insecure to show the fleet to anyone who "
            "can connect"
        )
    if not tls:
        raise ValueError(
            f"refusing to take bearer tokens in plaintext on {address!r}, which other "
            "machines can reach: give --tls-cert and --tls-key, bind a loopback "
            "--http-address, or pass --insecure (for example behind a proxy that ends TLS)"
        )
