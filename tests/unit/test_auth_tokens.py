"""Bearer tokens: stored hashed, shown once, roles and model patterns, revocation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgefabric.errors import UnauthenticatedError
from edgefabric.security.limits import TenantLimits
from edgefabric.security.tokens import Principal, Role, TokenStore, TokenVerifier

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore.in_home(tmp_path)


def test_the_secret_is_never_stored(store: TokenStore) -> None:
    token, info = store.create(Role.INFER, ["vision/*"], "acme")
    secret = token.removeprefix(f"eft_{info.token_id}_")
    assert len(secret) == 43
    data = store.path.read_bytes()
    assert secret.encode() not in data
    assert info.token_id.encode() in data
    assert os.stat(store.path).st_mode & 0o077 == 0  # readable by its owner only
    assert "secret" not in repr(store.tokens()[0]).lower()


def test_a_valid_token_authenticates_as_its_principal(store: TokenStore) -> None:
    token, info = store.create(Role.INFER, ["vision/*", "mlp"], "acme")
    principal = TokenVerifier(store).authenticate(f"Bearer {token}")
    assert principal == Principal(info.token_id, "acme", Role.INFER, ("vision/*", "mlp"))
    assert principal.may_use("vision/resnet")
    assert principal.may_use("mlp")
    assert not principal.may_use("mlp2")
    assert not principal.may_use("audio/x")
    assert not principal.is_admin


def test_admin_may_use_every_model(store: TokenStore) -> None:
    token, _ = store.create(Role.ADMIN, [], "ops")
    principal = TokenVerifier(store).authenticate(f"bearer {token}")
    assert principal.is_admin
    assert principal.may_use("anything")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "requires a token"),
        ("", "requires a token"),
        ("Basic dXNlcjpwYXNz", "must be 'Bearer <token>'"),
        ("Bearer", "must be 'Bearer <token>'"),
        ("Bearer abc", "malformed"),
        ("Bearer eft_0123456789ab_" + "A" * 43, "unknown or revoked"),
    ],
)
def test_missing_and_invalid_credentials_are_unauthenticated(
    store: TokenStore, header: str | None, message: str
) -> None:
    store.create(Role.ADMIN, [], "ops")
    with pytest.raises(UnauthenticatedError, match=message):
        TokenVerifier(store).authenticate(header)


def test_a_guessed_secret_for_a_real_id_is_refused(store: TokenStore) -> None:
    token, info = store.create(Role.ADMIN, [], "ops")
    forged = f"eft_{info.token_id}_{'B' * 43}"
    assert forged != token
    with pytest.raises(UnauthenticatedError, match=rf"token {info.token_id} is unknown or revoked"):
        TokenVerifier(store).authenticate(f"Bearer {forged}")


def test_revocation_and_new_tokens_apply_without_a_restart(store: TokenStore) -> None:
    first, info = store.create(Role.INFER, ["*"], "acme")
    verifier = TokenVerifier(store)
    verifier.authenticate(f"Bearer {first}")
    second, _ = store.create(Role.INFER, ["*"], "beta")
    assert verifier.authenticate(f"Bearer {second}").tenant == "beta"
    store.revoke(info.token_id)
    with pytest.raises(UnauthenticatedError, match=r"revoked"):
        verifier.authenticate(f"Bearer {first}")
    assert [i.revoked_at is not None for i in store.tokens()] == [True, False]


def test_revoking_twice_or_an_unknown_id_says_so(store: TokenStore) -> None:
    _, info = store.create(Role.ADMIN, [], "ops")
    store.revoke(info.token_id)
    with pytest.raises(ValueError, match=r"is already revoked"):
        store.revoke(info.token_id)
    with pytest.raises(ValueError, match=r"is not a token id.*token list"):
        store.revoke("ffffffffffff")


def test_verifier_without_a_token_file_refuses_everyone(store: TokenStore) -> None:
    verifier = TokenVerifier(store)
    with pytest.raises(UnauthenticatedError, match=r"unknown or revoked"):
        verifier.authenticate("Bearer eft_0123456789ab_" + "A" * 43)


def test_bad_token_requests_are_refused_with_what_to_do(store: TokenStore) -> None:
    with pytest.raises(ValueError, match=r"infer token needs the models.*--models"):
        store.create(Role.INFER, [], "acme")
    with pytest.raises(ValueError, match=r"model pattern 'a b'"):
        store.create(Role.INFER, ["a b"], "acme")
    with pytest.raises(ValueError, match=r"tenant 'no spaces'"):
        store.create(Role.ADMIN, [], "no spaces")
    assert store.tokens() == []


def test_tenant_limits_are_stored_and_reach_the_verifier(store: TokenStore) -> None:
    store.set_limits("acme", TenantLimits(rate_per_s=50, burst=10, max_concurrent=4))
    store.set_limits("acme", TenantLimits(rate_per_s=20, burst=5, max_concurrent=2))
    assert store.tenant_limits() == {"acme": TenantLimits(20, 5, 2)}
    assert TokenVerifier(store).tenant_limits == {"acme": TenantLimits(20, 5, 2)}
