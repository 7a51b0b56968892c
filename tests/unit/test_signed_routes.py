"""The store's signed route table as a gateway checks it: forged, tampered, replayed tables.

Attack-named tests against the pure checks (:func:`gateway.route_feed.accept_table`) and the
feed's state (:meth:`gateway.route_feed.RouteFeed.receive`), with no broker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefabric.desired import seal_desired
from edgefabric.errors import InvalidInputError
from edgefabric.mqtt import BrokerAddress
from edgefabric.signed_routes import open_routes, seal_routes
from edgefabric.wire.v1.fleet_pb2 import DesiredState
from edgefabric.wire.v1.routes_pb2 import RouteEntry, RouteTable, SignedRouteTable
from gateway.route_feed import RouteFeed, accept_table, merge_routes
from gateway.router import Router
from gateway.routing import Route
from gateway.settings import GatewaySettings

pytestmark = pytest.mark.unit

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()


def _accept(payload: bytes, applied: int = 0) -> dict[str, Route]:
    return dict(accept_table(payload, public_key=PUBLIC, applied_sequence=applied).routes)


def test_a_signed_table_opens_with_every_route_parsed() -> None:
    payload = seal_routes({"mlp": "local:0.9,edge:0.1;shadow=triton", "b": "one"}, 3, KEY)
    table = open_routes(payload, public_key=PUBLIC, applied_sequence=2)
    assert table.sequence == 3
    assert [e.model for e in table.routes] == ["b", "mlp"]  # sorted: one canonical encoding
    assert _accept(payload, 2) == {
        "b": Route("b", ("one",)),
        "mlp": Route("mlp", ("local", "edge"), {"local": 0.9, "edge": 0.1}, shadow="triton"),
    }


def test_an_empty_table_is_valid_and_removes_every_store_route() -> None:
    assert _accept(seal_routes({}, 1, KEY)) == {}


def test_a_tampered_table_is_refused() -> None:
    envelope = SignedRouteTable.FromString(seal_routes({"mlp": "one"}, 1, KEY))
    table = RouteTable.FromString(envelope.table)
    table.routes[0].spec = "attacker"
    envelope.table = table.SerializeToString(deterministic=True)
    with pytest.raises(InvalidInputError, match="signature does not verify"):
        _accept(envelope.SerializeToString())


def test_an_unsigned_table_is_refused() -> None:
    table = RouteTable(sequence=9, routes=[RouteEntry(model="mlp", spec="attacker")])
    unsigned = SignedRouteTable(table=table.SerializeToString()).SerializeToString()
    with pytest.raises(InvalidInputError, match="route table is not signed; refusing it"):
        _accept(unsigned)


def test_a_table_signed_by_another_key_is_refused() -> None:
    forged = seal_routes({"mlp": "attacker"}, 9, Ed25519PrivateKey.generate())
    with pytest.raises(InvalidInputError, match=r"does not verify with key [0-9a-f]{16}"):
        _accept(forged)


def test_a_replayed_or_rolled_back_table_is_refused() -> None:
    for sequence in (4, 3):
        with pytest.raises(InvalidInputError, match=f"sequence {sequence} is not newer than"):
            _accept(seal_routes({"mlp": "old"}, sequence, KEY), applied=4)


def test_a_signed_desired_state_does_not_pass_for_a_route_table() -> None:
    """Same key, another domain: a device's desired state cannot be replayed as routes."""
    desired = seal_desired(DesiredState(device_id="mlp", sequence=99), KEY)
    with pytest.raises(InvalidInputError):
        _accept(desired)


def test_garbage_is_refused_with_what_was_expected() -> None:
    with pytest.raises(InvalidInputError, match="not a SignedRouteTable"):
        _accept(b"\xff\xff\xff")


def test_a_table_with_a_route_the_gateway_cannot_parse_is_refused_whole() -> None:
    payload = seal_routes({"good": "one", "mlp": "one:x"}, 1, KEY)
    with pytest.raises(InvalidInputError, match=r"weight 'x'.*refusing the whole table"):
        _accept(payload)


def test_a_model_given_twice_is_refused() -> None:
    table = RouteTable(
        sequence=1, routes=[RouteEntry(model="m", spec="a"), RouteEntry(model="m", spec="b")]
    )
    body = table.SerializeToString()
    envelope = SignedRouteTable(table=body, signature=KEY.sign(b"edgefabric-routes-v1\x00" + body))
    with pytest.raises(InvalidInputError, match="gives model 'm' twice"):
        _accept(envelope.SerializeToString())


def test_store_routes_win_over_configured_ones_for_their_models_only() -> None:
    configured = {"mlp": Route("mlp", ("a",)), "other": Route("other", ("a",))}
    store = {"mlp": Route("mlp", ("b",)), "new": Route("new", ("b",))}
    assert merge_routes(configured, store) == {
        "mlp": Route("mlp", ("b",)),
        "other": Route("other", ("a",)),
        "new": Route("new", ("b",)),
    }


class _Router:
    """Records the tables it is given (the feed only calls set_routes)."""

    def __init__(self) -> None:
        self.tables: list[dict[str, Route]] = []

    def set_routes(self, routes: dict[str, Route]) -> None:
        self.tables.append(dict(routes))


def test_the_feed_keeps_the_last_good_table_through_attacks() -> None:
    async def scenario() -> tuple[_Router, RouteFeed]:
        router = _Router()
        feed = RouteFeed(
            cast(Router, router),
            {"mlp": Route("mlp", ("a",))},
            BrokerAddress.parse("mqtt://127.0.0.1:1883"),
            PUBLIC,
            client_id="test",
        )
        first = seal_routes({"mlp": "b"}, 1, KEY)
        assert feed.receive(first)
        assert not feed.receive(first)  # the store republished it: nothing to do, no refusal
        assert feed.refused == 0
        assert feed.receive(seal_routes({}, 2, KEY))  # the store removed it: --route again
        assert not feed.receive(first)  # replayed
        assert not feed.receive(seal_routes({"mlp": "evil"}, 3, Ed25519PrivateKey.generate()))
        assert "does not verify" in feed.last_refusal
        await feed.stop()
        return router, feed

    router, feed = asyncio.run(scenario())
    assert (feed.sequence, feed.applied, feed.refused) == (2, 2, 2)
    assert router.tables == [{"mlp": Route("mlp", ("b",))}, {"mlp": Route("mlp", ("a",))}]


def _settings(**values: Any) -> GatewaySettings:
    return GatewaySettings(**values)


def _pem(tmp_path: Path, key: Ed25519PrivateKey | None = None) -> Path:
    path = tmp_path / "controller.pub"
    public = (key or KEY).public_key()
    path.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({}, "there is none: give --report-broker"),
        ({"report_broker": "mqtt://127.0.0.1:1883", "routes_key": None}, "pass --routes-key"),
        ({"report_broker": "mqtt://127.0.0.1:1883", "routes_key": "missing.pub"}, "cannot read"),
        ({"report_broker": "mqtt://127.0.0.1:1883", "routes_key": "junk.pub"}, "not a PEM"),
    ],
    ids=["no-broker", "no-key", "missing-key", "junk-key"],
)
def test_routes_from_broker_settings_say_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, object], message: str
) -> None:
    monkeypatch.delenv("EDGEFABRIC_HOME", raising=False)
    (tmp_path / "junk.pub").write_text("not a key")
    values: dict[str, object] = {"routes_key": _pem(tmp_path), **overrides}
    if isinstance(values["routes_key"], str):
        values["routes_key"] = tmp_path / str(values["routes_key"])
    with pytest.raises(ValueError, match=message):
        _settings(model_repository=tmp_path, routes_from_broker=True, **values)


def test_the_routes_key_defaults_to_the_homes_controller_key(tmp_path: Path) -> None:
    _pem(tmp_path)
    settings = _settings(
        model_repository=tmp_path,
        routes_from_broker=True,
        pools=("edge=mqtt://127.0.0.1:1883",),
        home=tmp_path,
    )
    assert settings.routes_key_path() == tmp_path / "controller.pub"
    assert settings.fleet_broker() == "mqtt://127.0.0.1:1883"
    with pytest.raises(ValueError, match="--routes-key is the key of --routes-from-broker"):
        _settings(model_repository=tmp_path, routes_key=_pem(tmp_path))
