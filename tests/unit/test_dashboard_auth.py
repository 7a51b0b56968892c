"""Who may read the dashboard and where it may listen (model_store/dashboard/auth.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefabric.errors import PermissionDeniedError, UnauthenticatedError
from edgefabric.security.tokens import Role, TokenStore, TokenVerifier
from model_store.dashboard import check_dashboard_exposure, require_admin

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("address", ["127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"])
def test_loopback_addresses_need_neither_auth_nor_tls(address: str) -> None:
    check_dashboard_exposure(address, auth=False, tls=False, insecure=False)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "10.0.0.4", "store.example.internal"])
def test_a_reachable_address_needs_auth_and_tls_or_insecure(address: str) -> None:
    with pytest.raises(ValueError, match="without authentication") as caught:
        check_dashboard_exposure(address, auth=False, tls=True, insecure=False)
    assert "--auth required" in str(caught.value)
    assert "--insecure" in str(caught.value)
    with pytest.raises(ValueError, match="bearer tokens in plaintext") as caught:
        check_dashboard_exposure(address, auth=True, tls=False, insecure=False)
    assert "--tls-cert and --tls-key" in str(caught.value)
    check_dashboard_exposure(address, auth=True, tls=True, insecure=False)
    check_dashboard_exposure(address, auth=False, tls=False, insecure=True)


def test_only_admin_tokens_pass_and_others_say_why(tmp_path: Path) -> None:
    store = TokenStore.in_home(tmp_path)
    admin, _ = store.create(Role.ADMIN, (), "ops")
    infer, info = store.create(Role.INFER, ("vision/*",), "acme")
    authorize = require_admin(TokenVerifier(store))
    assert authorize({"authorization": f"Bearer {admin}"}) is True
    with pytest.raises(PermissionDeniedError, match=f"token {info.token_id} .* infer role"):
        authorize({"authorization": f"Bearer {infer}"})
    with pytest.raises(UnauthenticatedError, match="requires a token"):
        authorize({})
    with pytest.raises(UnauthenticatedError, match="'Basic' credential"):
        authorize({"authorization": "Basic YWRtaW46YWRtaW4="})
