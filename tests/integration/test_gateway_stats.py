"""A gateway's routing statistics reach the store's dashboard over a real mosquitto.

The gateway runs in-process (``start_gateway``), is called with tritonclient, and publishes
every 0.2 s; the store's dashboard API (``StoreServer`` with an HTTP port of 0) must then chart
the gateway's ``local`` pool. Waits are on the history's condition, never on a sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress
from edgefabric.samples import mlp_model, write_model
from model_store.dashboard import FleetHistory
from model_store.home import StoreHome
from model_store.serve import StoreServer, StoreServerOptions
from model_store.store import ModelStore
from tests.cli import run_edgefabric
from tests.conftest import GatewayThread
from tests.integration.test_dashboard_api import get

pytestmark = pytest.mark.integration

WAIT_S = 30.0
INTERVAL_S = 0.2


@pytest.fixture
def store(tmp_path: Path, mqtt_broker: PrivateBroker) -> Iterator[StoreServer]:
    """The store serving its dashboard on a free port, subscribed to the broker."""
    home = tmp_path / "home"
    run_edgefabric(home, "keys", "init")
    models = ModelStore(StoreHome(home))
    options = StoreServerOptions(
        broker=BrokerAddress.parse(mqtt_broker.url), client_id="store", http_port=0
    )
    server = StoreServer(models, options)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        models.close()


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A repository with one small model: ``mlp``."""
    write_model(tmp_path / "repo", "mlp", mlp_model())
    return tmp_path / "repo"


def infer(gateway: GatewayThread, features: int = 16, model: str = "mlp") -> None:
    client = grpcclient.InferenceServerClient(gateway.address)
    try:
        x = grpcclient.InferInput("x", [2, features], "FP32")
        x.set_data_from_numpy(np.ones((2, features), dtype=np.float32))
        client.infer(model, [x], client_timeout=WAIT_S)
    finally:
        client.close()


def charted(gateway_id: str, requests: int) -> Callable[[FleetHistory], bool]:
    """Whether the history holds ``requests`` of mlp in ``gateway_id``'s local pool."""

    def holds(history: FleetHistory) -> bool:
        return any(
            (s.model, s.pool, s.gateway) == ("mlp", "local", gateway_id)
            and sum(p.requests for p in s.points) >= requests
            for s in history.series(3600, time.time())  # the clock DashboardData reads
        )

    return holds


def local_panel(server: StoreServer, gateway_id: str) -> dict[str, Any]:
    assert server.dashboard is not None
    document = get(server.dashboard.url + "api/metrics?window=600")
    panels = [
        s
        for s in document["series"]
        if (s["model"], s["pool"], s["gateway"]) == ("mlp", "local", gateway_id)
    ]
    assert len(panels) == 1, document["series"]
    panel: dict[str, Any] = panels[0]
    return panel


def test_the_dashboard_charts_the_requests_a_gateway_served_locally(
    store: StoreServer,
    mqtt_broker: PrivateBroker,
    repository: Path,
    start_gateway: Callable[..., GatewayThread],
) -> None:
    gateway = start_gateway(
        repository,
        report_broker=mqtt_broker.url,
        report_interval_s=INTERVAL_S,
        gateway_id="gw-1",
    )
    for _ in range(5):
        infer(gateway)
    with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
        infer(gateway, features=3)  # the wrong shape: answered, and counted as an error
    assert store.history.wait_for(charted("gw-1", 6), WAIT_S)
    panel = local_panel(store, "gw-1")
    points = panel["points"]
    assert sum(p["requests"] for p in points) == 6
    assert sum(p["errors"] for p in points) == 1
    latencies = [p for p in points if p["p99_ms"] is not None]
    assert latencies
    assert all(0 < p["p50_ms"] <= p["p99_ms"] < WAIT_S * 1000 for p in latencies)
    reporter = gateway.gateway.reporter
    assert reporter is not None
    assert reporter.topic == "ef/v1/gw/gw-1/stats"


def test_a_broker_that_is_down_holds_up_neither_the_gateway_nor_later_reports(
    store: StoreServer,
    mqtt_broker: PrivateBroker,
    repository: Path,
    start_gateway: Callable[..., GatewayThread],
) -> None:
    mqtt_broker.stop()
    gateway = start_gateway(repository, report_broker=mqtt_broker.url, report_interval_s=INTERVAL_S)
    infer(gateway)  # served while no report can go out
    mqtt_broker.start()
    reporter = gateway.gateway.reporter
    assert reporter is not None
    gateway_id = reporter.gateway_id  # the host name, by default
    # Requests keep coming; once both ends are back, their reports are charted.
    history = store.history
    for _ in range(int(WAIT_S / INTERVAL_S)):
        infer(gateway)
        if history.wait_for(charted(gateway_id, 1), INTERVAL_S * 2):
            break
    assert history.wait_for(charted(gateway_id, 1), 0)
    assert local_panel(store, gateway_id)["points"]


def test_routed_pools_are_charted_per_gateway_and_pool(
    store: StoreServer,
    mqtt_broker: PrivateBroker,
    tmp_path: Path,
    start_gateway: Callable[..., GatewayThread],
) -> None:
    """A front gateway serving ``mlp`` itself and ``far`` from a backend pool ``triton`` (a
    KServe v2 server: here another gateway, which reports its own ``local`` pool)."""
    write_model(tmp_path / "back", "far", mlp_model())
    write_model(tmp_path / "front", "mlp", mlp_model())
    reporting = {"report_broker": mqtt_broker.url, "report_interval_s": INTERVAL_S}
    backend = start_gateway(tmp_path / "back", gateway_id="gw-back", **reporting)
    front = start_gateway(
        tmp_path / "front",
        pools=(f"triton=grpc://{backend.address}",),
        gateway_id="gw-front",
        **reporting,
    )
    for model in ("far", "far", "far", "mlp", "mlp"):
        infer(front, model=model)

    def everything_charted(history: FleetHistory) -> bool:
        totals = {
            (s.model, s.pool, s.gateway): sum(p.requests for p in s.points)
            for s in history.series(3600, time.time())
        }
        return totals == {
            ("far", "local", "gw-back"): 3,
            ("far", "triton", "gw-front"): 3,
            ("mlp", "local", "gw-front"): 2,
        }

    assert store.history.wait_for(everything_charted, WAIT_S)
    assert store.dashboard is not None
    document = get(store.dashboard.url + "api/metrics?window=600")
    assert [(s["model"], s["pool"], s["gateway"]) for s in document["series"]] == [
        ("far", "local", "gw-back"),
        ("far", "triton", "gw-front"),
        ("mlp", "local", "gw-front"),
    ]
