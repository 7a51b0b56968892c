"""The gateways' route table in the store: registry rows, sequence, sealing, audit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefabric import topics
from edgefabric.desired import load_public_key
from edgefabric.errors import InvalidInputError, SigningKeyError, StoreError, TransportError
from edgefabric.mqtt import MqttClient
from edgefabric.signed_routes import open_routes, routes_of
from model_store.fleet import controller_key, controller_public_key_path
from model_store.home import StoreHome
from model_store.routes import (
    check_route,
    delete_route,
    publish_routes,
    routes,
    sequence,
    set_route,
)
from model_store.store import ModelStore

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ModelStore]:
    opened = ModelStore(StoreHome(tmp_path / "home"), actor="ops")
    controller_key(opened.home, create=True)
    yield opened
    opened.close()


class _Broker:
    """Keeps what is published (the store code calls publish only); ``fail`` refuses."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.published: list[tuple[str, bytes, bool]] = []

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool, wait: bool) -> None:
        if self.fail:
            raise TransportError("broker went away")
        self.published.append((topic, payload, retain))


def _mqtt(broker: _Broker) -> MqttClient:
    return broker  # type: ignore[return-value]  # the one method the store calls


def _opened(store: ModelStore, payload: bytes) -> dict[str, str]:
    key = load_public_key(controller_public_key_path(store.home).read_bytes())
    return routes_of(open_routes(payload, public_key=key, applied_sequence=0))


def test_set_replace_list_and_delete_each_seal_the_whole_table(store: ModelStore) -> None:
    broker = _Broker()
    set_route(store, "mlp", " local:0.9, edge:0.1 ; shadow=triton ", mqtt=_mqtt(broker))
    set_route(store, "b", "one", mqtt=_mqtt(broker))
    change = set_route(store, "mlp", "local", mqtt=_mqtt(broker))
    assert (change.sequence, change.published) == (3, True)
    assert routes(store) == {"b": "one", "mlp": "local"}
    assert delete_route(store, "b", mqtt=_mqtt(broker)).table == {"mlp": "local"}
    assert [(t, retain) for t, _, retain in broker.published] == [(topics.ROUTES, True)] * 4
    assert _opened(store, broker.published[0][1]) == {
        "mlp": "local:0.9,edge:0.1;shadow=triton"  # canonical form
    }
    assert _opened(store, broker.published[-1][1]) == {"mlp": "local"}
    entries = [(e.action, e.subject, e.actor, e.details) for e in store.audit.entries()]
    assert entries[0] == (
        "route.set",
        "mlp",
        "ops",
        {"sequence": 1, "published": True, "route": "local:0.9,edge:0.1;shadow=triton"},
    )
    assert [a for a, *_ in entries] == ["route.set", "route.set", "route.set", "route.delete"]
    assert store.audit_problems() == []


def test_the_sequence_survives_a_restart_and_serve_republishes_the_last_table(
    store: ModelStore,
) -> None:
    set_route(store, "mlp", "one")  # no broker: sealed and kept, not published
    reopened = ModelStore(store.home)
    try:
        assert sequence(reopened) == 1
        broker = _Broker()
        assert publish_routes(reopened, _mqtt(broker)) == 1
        assert _opened(reopened, broker.published[0][1]) == {"mlp": "one"}
        assert set_route(reopened, "mlp", "two").sequence == 2
    finally:
        reopened.close()


def test_nothing_is_sealed_or_published_before_the_first_change(store: ModelStore) -> None:
    broker = _Broker()
    assert publish_routes(store, _mqtt(broker)) == 0
    assert broker.published == []


def test_a_failed_publish_changes_nothing(store: ModelStore) -> None:
    set_route(store, "mlp", "one")
    with pytest.raises(TransportError, match="broker went away"):
        set_route(store, "mlp", "two", mqtt=_mqtt(_Broker(fail=True)))
    assert (routes(store), sequence(store)) == ({"mlp": "one"}, 1)
    assert [e.action for e in store.audit.entries()] == ["route.set"]
    assert store.audit_problems() == []


@pytest.mark.parametrize(
    ("model", "spec", "message"),
    [
        ("mlp", "mlp=local", "give the route without 'MODEL='"),
        ("mlp", "local:x", "weight 'x' of 'local' is not a number"),
        ("mlp", "local;shadow=local", "shadow 'local' also serves"),
        ("mlp", "a;bogus", "is not one of shadow=TARGET"),
        ("mlp", "", "expected MODEL=TARGET"),
        ("a b", "local", "model name 'a b' is not allowed"),
    ],
)
def test_a_bad_route_is_refused_with_the_reason(
    store: ModelStore, model: str, spec: str, message: str
) -> None:
    with pytest.raises((InvalidInputError, StoreError), match=message):
        set_route(store, model, spec)
    assert routes(store) == {}
    assert store.audit.entries() == []


def test_deleting_a_route_that_is_not_there_names_the_ones_that_are(store: ModelStore) -> None:
    set_route(store, "mlp", "one")
    with pytest.raises(StoreError, match=r"'nope' has no route in the store \(routes: mlp\)"):
        delete_route(store, "nope")
    assert sequence(store) == 1


def test_without_the_controller_key_nothing_changes(tmp_path: Path) -> None:
    bare = ModelStore(StoreHome(tmp_path / "bare"))
    try:
        with pytest.raises(SigningKeyError, match="edgefabric keys init"):
            set_route(bare, "mlp", "one")
        assert routes(bare) == {}
    finally:
        bare.close()


def test_the_canonical_form_reads_back_as_the_same_route() -> None:
    assert check_route("mlp", "a@1:3, a@2:1 ; hedge=p99") == "a@1:3.0,a@2:1.0;hedge=p99"
    assert check_route("mlp", "a:1,*;affinity=site") == "a:1.0,*;affinity=site"
