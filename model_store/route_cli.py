"""``edgefabric route set|delete|list``: the gateways' route table, kept in the store.

``set`` and ``delete`` seal the whole table with the controller key and, given ``--broker``
(as ``fleet assign`` is), publish it retained on ``ef/v1/routes``; without it the change waits
for the next ``store serve``, which publishes the table when it starts. Gateways started with
``--routes-from-broker`` apply it (see :mod:`model_store.routes`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from edgefabric import topics
from edgefabric.security.flags import add_mqtt_tls_arguments
from model_store.enroll import mqtt_tls_from
from model_store.store import ModelStore

if TYPE_CHECKING:
    from edgefabric.mqtt import MqttClient
    from model_store.routes import RouteChange

__all__ = ["register_route"]

Action = Callable[[ModelStore, argparse.Namespace], int]
EXAMPLE = "local:0.9,edge:0.1;shadow=triton"


@contextlib.contextmanager
def _broker(args: argparse.Namespace) -> Iterator[MqttClient | None]:
    """A connected client when ``--broker`` was given (the TLS flags need it)."""
    if args.broker is None:
        args.broker = ""
        mqtt_tls_from(args)  # --mqtt-* without --broker: the usual message
        yield None
        return
    from edgefabric.mqtt import BrokerAddress, MqttClient  # noqa: PLC0415  (paho when used)

    with MqttClient(
        BrokerAddress.parse(args.broker), args.client_id, tls=mqtt_tls_from(args)
    ) as mqtt:
        yield mqtt


def _report(change: RouteChange, what: str) -> None:
    where = (
        f"published on {topics.ROUTES}"
        if change.published
        else "not published: pass --broker, or it goes out when `store serve` starts"
    )
    print(f"{what} (route table sequence {change.sequence}, signed; {where})")


def _set(store: ModelStore, args: argparse.Namespace) -> int:
    from model_store.routes import set_route  # noqa: PLC0415  (paho only where it is used)

    with _broker(args) as mqtt:
        change = set_route(store, args.model, args.route, mqtt=mqtt)
    _report(change, f"{args.model}: {change.table[args.model]}")
    return 0


def _delete(store: ModelStore, args: argparse.Namespace) -> int:
    from model_store.routes import delete_route  # noqa: PLC0415

    with _broker(args) as mqtt:
        change = delete_route(store, args.model, mqtt=mqtt)
    _report(change, f"{args.model}: no store route")
    return 0


def _list(store: ModelStore, args: argparse.Namespace) -> int:
    from model_store.routes import routes, sequence  # noqa: PLC0415

    table = routes(store)
    if args.json:
        print(json.dumps({"sequence": sequence(store), "routes": table}, indent=2))
        return 0
    if not table:
        print(f"no routes yet: `edgefabric route set MODEL '{EXAMPLE}'` adds one")
        return 0
    width = max(len(model) for model in table)
    for model, spec in table.items():
        print(f"{model.ljust(width)}  {spec}")
    print(f"(route table sequence {sequence(store)})")
    return 0


def _broker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--broker", help="publish the table to this mqtt(s)://HOST:PORT broker (retained)"
    )
    parser.add_argument("--client-id", default="edgefabric-controller", help="MQTT client id")
    add_mqtt_tls_arguments(parser)


def register_route(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    run: Callable[[Action], Callable[..., int]],
) -> None:
    """Add the ``route`` command group (``run`` opens the store and reports errors)."""
    group = commands.add_parser("route", help="the gateways' route table (signed, on ef/v1/routes)")
    sub = group.add_subparsers(dest="action", required=True)
    setter = sub.add_parser(
        "set",
        parents=[common],
        help="set a model's route",
        description="ROUTE is the --route syntax after MODEL=: "
        "TARGET[:WEIGHT][,TARGET[:WEIGHT]...][,*][;shadow=TARGET][;affinity=LABEL][;hedge[=WHEN]]",
    )
    setter.add_argument("model", help="the model the route is for")
    setter.add_argument("route", help=f"e.g. '{EXAMPLE}'")
    _broker_arguments(setter)
    setter.set_defaults(handler=run(_set))
    deleter = sub.add_parser("delete", parents=[common], help="remove a model's route")
    deleter.add_argument("model", help="the model whose route goes")
    _broker_arguments(deleter)
    deleter.set_defaults(handler=run(_delete))
    listing = sub.add_parser("list", parents=[common], help="every stored route")
    listing.add_argument("--json", action="store_true", help="machine-readable")
    listing.set_defaults(handler=run(_list))
