"""Route tables from the store: ``edgefabric route set`` moves a running gateway's traffic.

A real mosquitto, a store home with its controller key, two in-process backend gateways as
pools ``one`` and ``two``, and a front gateway started with ``--routes-from-broker``; the
client is tritonclient, and the ``edgefabric.pool`` response parameter says who answered.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgefabric import topics
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress, MqttClient
from edgefabric.samples import mlp_model, write_model
from edgefabric.signed_routes import seal_routes
from edgefabric.wire.v1.routes_pb2 import RouteTable, SignedRouteTable
from gateway.route_feed import RouteFeed
from gateway.routing import Route
from model_store.audit import AuditLog
from model_store.fleet import controller_key
from model_store.home import StoreHome
from model_store.serve import StoreServer, StoreServerOptions
from model_store.store import ModelStore
from tests.cli import run_edgefabric
from tests.conftest import GatewayThread

pytestmark = pytest.mark.integration

TIMEOUT_S = 15.0


def _repository(root: Path, *names: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_model(root, name, mlp_model())
    return root


def _pool_answering(front: GatewayThread) -> str:
    tensor = triton.InferInput("x", [2, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
    with triton.InferenceServerClient(front.address) as client:
        response = client.infer("mlp", [tensor], client_timeout=10).get_response()
    return str(response.parameters["edgefabric.pool"].string_param)


def _feed(front: GatewayThread) -> RouteFeed:
    feed = front.gateway.route_feed
    assert feed is not None
    return feed


def _wait(front: GatewayThread, predicate: Callable[[RouteFeed], bool]) -> None:
    front.call(_feed(front).wait, predicate, TIMEOUT_S)


class Fabric:
    """The store home, two backends and a way to start front gateways reading routes."""

    def __init__(
        self,
        start_gateway: Callable[..., GatewayThread],
        broker: PrivateBroker,
        tmp_path: Path,
    ) -> None:
        self.start_gateway, self.broker, self.tmp_path = start_gateway, broker, tmp_path
        self.home = tmp_path / "home"
        store = ModelStore(StoreHome(self.home))
        try:
            store.init_keys()  # TUF keys (for store serve) and the controller key
            self.key = controller_key(store.home)
        finally:
            store.close()
        one = start_gateway(_repository(tmp_path / "b1", "mlp"))
        two = start_gateway(_repository(tmp_path / "b2", "mlp"))
        self.pools = (f"one=grpc://{one.address}", f"two=grpc://{two.address}")

    def front(self, **overrides: object) -> GatewayThread:
        return self.start_gateway(
            _repository(self.tmp_path / "front"),
            pools=self.pools,
            routes=("mlp=one",),
            report_broker=self.broker.url,
            report_interval_s=0,
            routes_from_broker=True,
            routes_key=self.home / "controller.pub",
            home=self.home,  # the audit log the gateway's admin actions join
            **overrides,
        )

    def route(self, *args: str) -> str:
        return run_edgefabric(self.home, "route", *args, "--broker", self.broker.url)


@pytest.fixture
def fabric(
    start_gateway: Callable[..., GatewayThread], mqtt_broker: PrivateBroker, tmp_path: Path
) -> Fabric:
    return Fabric(start_gateway, mqtt_broker, tmp_path)


def test_route_set_moves_traffic_and_attacks_leave_the_last_good_table_serving(
    fabric: Fabric, connect_mqtt: Callable[..., MqttClient]
) -> None:
    front = fabric.front()
    assert _pool_answering(front) == "one"  # --route, before the store routes anything

    assert "sequence 1" in fabric.route("set", "mlp", "two")
    _wait(front, lambda feed: feed.sequence == 1)
    assert {_pool_answering(front) for _ in range(5)} == {"two"}

    attacker = connect_mqtt(fabric.broker)  # this broker has no ACL: only signatures protect
    envelope = SignedRouteTable.FromString(seal_routes({"mlp": "two"}, 2, fabric.key))
    table = RouteTable.FromString(envelope.table)
    table.routes[0].spec = "one"  # tampered: the signature no longer covers it
    envelope.table = table.SerializeToString()
    attacker.publish(topics.ROUTES, envelope.SerializeToString(), retain=True, wait=True)
    _wait(front, lambda feed: feed.refused == 1)
    assert "signature does not verify" in _feed(front).last_refusal

    forged = seal_routes({"mlp": "one"}, 7, Ed25519PrivateKey.generate())
    attacker.publish(topics.ROUTES, forged, retain=True, wait=True)
    _wait(front, lambda feed: feed.refused == 2)
    assert {_pool_answering(front) for _ in range(5)} == {"two"}

    fabric.route("set", "mlp", "one:1,two:0")  # sequence 2
    _wait(front, lambda feed: feed.sequence == 2)
    assert _pool_answering(front) == "one"
    replayed = seal_routes({"mlp": "two"}, 1, fabric.key)  # a genuine, older table
    attacker.publish(topics.ROUTES, replayed, retain=True, wait=True)
    _wait(front, lambda feed: feed.refused == 3)
    assert "sequence 1 is not newer than the applied 2" in _feed(front).last_refusal
    assert {_pool_answering(front) for _ in range(5)} == {"one"}

    router = front.gateway.router
    assert router is not None
    assert router.route("mlp") == Route("mlp", ("one", "two"), {"one": 1.0, "two": 0.0})
    fabric.route("delete", "mlp")  # back to the --route entry
    _wait(front, lambda feed: feed.sequence == 3)
    assert router.route("mlp") == Route("mlp", ("one",))
    assert _pool_answering(front) == "one"

    front.call(front.gateway.stop, 1.0)  # audit entries under way are written by then
    entries = AuditLog(fabric.home / "audit.log").entries()
    applied = [e for e in entries if e.action == "gateway.routes.applied"]
    assert [e.details["sequence"] for e in applied] == [1, 2, 3]
    assert applied[0].details["routes"] == {"mlp": "two"}
    assert applied[0].actor.startswith("controller:")
    assert "audit log intact" in run_edgefabric(fabric.home, "audit", "verify")


def test_a_gateway_started_later_takes_the_retained_table_and_store_serve_republishes_it(
    fabric: Fabric,
) -> None:
    run_edgefabric(fabric.home, "route", "set", "mlp", "two")  # no --broker: not published
    store = ModelStore(StoreHome(fabric.home))
    server = StoreServer(store, StoreServerOptions(BrokerAddress.parse(fabric.broker.url)))
    try:
        server.start()  # publishes the kept table, retained
        front = fabric.front()
        _wait(front, lambda feed: feed.sequence >= 1)
        assert _pool_answering(front) == "two"
    finally:
        server.stop()
        store.close()


def test_version_swaps_join_the_audit_log_done_or_failed(
    start_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    from gateway.admin import swap  # noqa: PLC0415
    from tests.integration.test_gateway_routing_traffic import _two_versions  # noqa: PLC0415

    home = tmp_path / "home"
    ModelStore(StoreHome(home)).close()
    front = start_gateway(_two_versions(tmp_path / "front"), routes=("mlp=local",), home=home)
    with pytest.raises(grpc.RpcError, match="has no version 7"):
        list(swap(front.address, "mlp", "local@7", steps=1, step_s=0))
    phases = [p["phase"] for p in swap(front.address, "mlp", "local@2", steps=1, step_s=0)]
    assert phases[-1] == "done"
    entries = [
        (e.action, e.subject, e.actor, e.details) for e in AuditLog(home / "audit.log").entries()
    ]
    assert entries == [
        ("gateway.route.swap", "mlp", "gateway:anonymous",
         {"to": "local@7", "steps": 1, "outcome": "failed"}),
        ("gateway.route.swap", "mlp", "gateway:anonymous",
         {"to": "local@2", "steps": 1, "outcome": "done"}),
    ]  # fmt: skip
