"""The gateways' route table, kept in the store and published signed on ``ef/v1/routes``.

One row per model in the registry (``routes`` table), in the ``--route`` syntax after
``MODEL=``, checked with the gateway's own parser (:mod:`gateway.routing`, imported when a
route is checked). Every change, under the store's write lock and in one registry transaction:
stores the row, takes the next table sequence, seals the whole table with the controller key
(:func:`edgefabric.signed_routes.seal_routes`), publishes it retained when given a broker
connection (a failed publish changes nothing), keeps the sealed bytes and appends to the audit
log. ``store serve`` republishes the kept bytes when it starts (:func:`publish_routes`), so a
broker that lost its retained messages gets the table back, and a change made without
``--broker`` reaches the gateways then.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime

from edgefabric import topics
from edgefabric.errors import InvalidInputError, StoreError
from edgefabric.mqtt import MqttClient
from edgefabric.signed_routes import seal_routes
from model_store.fleet import controller_key
from model_store.registry import check_model_name
from model_store.store import ModelStore

__all__ = [
    "RouteChange",
    "check_route",
    "delete_route",
    "publish_routes",
    "routes",
    "sequence",
    "set_route",
]

_SEQUENCE_KEY = "routes_sequence"
_SEALED_KEY = "routes_sealed"
EXAMPLE = "local:0.9,edge:0.1;shadow=triton"  # also in model_store.route_cli


def check_route(model: str, spec: str) -> str:
    """``spec`` in canonical form when it is a valid route for ``model``; else a clear error."""
    from gateway.routing import format_route, parse_route  # noqa: PLC0415  (the gateway's parser)

    check_model_name(model)
    text = spec.strip()
    head = text.partition(";")[0]
    if "=" in head:
        raise InvalidInputError(
            f"route {spec!r}: give the route without 'MODEL=' (the model is its own argument), "
            f"e.g. `edgefabric route set {model} '{EXAMPLE}'`"
        )
    try:
        route = parse_route(f"{model}={text}")
    except ValueError as exc:
        raise InvalidInputError(str(exc).replace(f"'{model}={text}'", repr(text), 1)) from None
    return format_route(route).partition("=")[2]


@dataclass(frozen=True)
class RouteChange:
    """What a change did: the table's new sequence, the whole table, and whether it was
    published."""

    sequence: int
    table: dict[str, str]
    published: bool


def routes(store: ModelStore) -> dict[str, str]:
    """The stored table: model -> route text."""
    return store.registry.routes()


def sequence(store: ModelStore) -> int:
    """The sequence of the last sealed table (0: none yet)."""
    return int(store.registry.meta(_SEQUENCE_KEY, "0"))


def set_route(
    store: ModelStore, model: str, spec: str, *, mqtt: MqttClient | None = None
) -> RouteChange:
    """Set ``model``'s route; sealed, audited, and published when ``mqtt`` is given."""
    canonical = check_route(model, spec)
    return _change(store, "route.set", model, canonical, mqtt)


def delete_route(store: ModelStore, model: str, *, mqtt: MqttClient | None = None) -> RouteChange:
    """Remove ``model``'s route (its requests go to any pool serving it, or a ``--route``)."""
    return _change(store, "route.delete", model, None, mqtt)


def publish_routes(store: ModelStore, mqtt: MqttClient) -> int:
    """Publish the last sealed table again (retained); its sequence, 0 when there is none."""
    sealed = store.registry.meta(_SEALED_KEY, "")
    if not sealed:
        return 0
    mqtt.publish(topics.ROUTES, base64.b64decode(sealed), qos=1, retain=True, wait=True)
    return sequence(store)


def _change(
    store: ModelStore, action: str, model: str, spec: str | None, mqtt: MqttClient | None
) -> RouteChange:
    key = controller_key(store.home)  # before anything changes: no key, no change
    with store.home.exclusive(), store.registry.transaction():
        registry = store.registry
        if spec is None:
            if not registry.delete_route(model):
                known = ", ".join(registry.routes()) or "none"
                raise StoreError(
                    f"model {model!r} has no route in the store (routes: {known}); "
                    "`edgefabric route list` shows them"
                )
        else:
            at = datetime.now(UTC).isoformat(timespec="seconds")
            registry.put_route(model, spec, at=at, by=store.actor)
        table = registry.routes()
        number = sequence(store) + 1
        sealed = seal_routes(table, number, key)
        if mqtt is not None:  # first: a failed publish leaves the store as it was
            mqtt.publish(topics.ROUTES, sealed, qos=1, retain=True, wait=True)
        registry.set_meta(_SEQUENCE_KEY, str(number))
        registry.set_meta(_SEALED_KEY, base64.b64encode(sealed).decode("ascii"))
        details: dict[str, object] = {"sequence": number, "published": mqtt is not None}
        if spec is not None:
            details["route"] = spec
        store.record(action, model, details)
    return RouteChange(number, table, mqtt is not None)
