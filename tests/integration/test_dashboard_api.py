"""The dashboard's JSON API inside ``StoreServer``, over simulated devices on a real mosquitto."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgefabric.desired import load_public_key
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress
from edgefabric.samples import mlp_model
from model_store.dashboard import DashboardData, DashboardServer, FleetHistory
from model_store.home import StoreHome
from model_store.serve import StoreServer, StoreServerOptions
from model_store.sim_device import Behaviour
from model_store.simulate import FleetSimulator, SimulationSettings
from model_store.store import ModelStore
from tests.cli import run_edgefabric

pytestmark = pytest.mark.integration

DEVICES = 4
WAIT_S = 30.0
EVIL = '<img src=x onerror="document.title=1">'


@dataclass
class Fabric:
    home: Path
    server: StoreServer
    rollout_id: str

    @property
    def url(self) -> str:
        assert self.server.dashboard is not None
        return self.server.dashboard.url

    @property
    def history(self) -> FleetHistory:
        return self.server.history


def fetch(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    """The response to a request (a context manager); HTTPError for 4xx and 5xx."""
    assert url.startswith("http://127.0.0.1:")
    request = urllib.request.Request(url, headers=headers or {}, method=method)  # noqa: S310
    return urllib.request.urlopen(request, timeout=10)  # noqa: S310  (the loopback URL above)


def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    with fetch(url, headers, method) as response:
        assert response.headers["Content-Type"] == "application/json"
        return json.load(response)


def refused(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> Any:
    """The HTTPError of a request that must fail, with its JSON body read."""
    with pytest.raises(urllib.error.HTTPError) as caught:
        get(url, headers, method)
    error = caught.value
    body = json.loads(error.read())
    error.close()
    return error.code, body, error.headers


@pytest.fixture(scope="module")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fabric]:
    """A store with mlp:1 and mlp:2, four simulated devices, the store serving the dashboard on
    a free port, and a rollout of mlp:2 baking in its first stage (2 of 4 devices)."""
    root = tmp_path_factory.mktemp("dashboard")
    home = root / "home"
    run_edgefabric(home, "keys", "init")
    for version, hidden in ((1, 16), (2, 24)):
        path = root / f"mlp{version}.onnx"
        path.write_bytes(mlp_model(hidden=hidden).SerializeToString())
        run_edgefabric(home, "model", "push", str(path), "--name", "mlp")
    with PrivateBroker(root / "mosquitto") as broker:
        settings = SimulationSettings(
            broker=broker.url,
            devices=DEVICES,
            prefix="cam",
            labels={"site": "plant-{i%2}", "note": EVIL},
            serving={"mlp": 1},
            behaviour=Behaviour(error_rates={("mlp", 2): 0.1}, requests_per_s=100.0),
            health_interval_s=0.2,
        )
        public_key = load_public_key((home / "controller.pub").read_bytes())
        with FleetSimulator(settings, public_key=public_key):
            store = ModelStore(StoreHome(home))
            options = StoreServerOptions(
                broker=BrokerAddress.parse(broker.url), client_id="store", http_port=0
            )
            server = StoreServer(store, options)
            server.start()
            try:
                online = lambda views: sum(v.online for v in views.values()) == DEVICES  # noqa: E731
                assert server.fleet.wait_for(online, WAIT_S)
                server.fleet.flush()  # `rollout start` reads the device table
                out = run_edgefabric(
                    home, "rollout", "start", "mlp:2", "--stages", "50%,100%", "--bake", "1h"
                )
                rollout_id = out.split()[1].rstrip(":")
                yield Fabric(home, server, rollout_id)
            finally:
                server.stop()
                store.close()


def _serving_v2(history: FleetHistory) -> bool:
    return (
        sum(
            any(s["active"] and s["version"] == 2 for s in health.slots)
            for health in history.health().values()
        )
        == DEVICES // 2
    )


def test_devices_show_online_state_versions_per_model_and_slots(fabric: Fabric) -> None:
    assert fabric.history.wait_for(_serving_v2, WAIT_S)
    document = get(fabric.url + "api/devices")
    assert (document["total"], document["online"]) == (DEVICES, DEVICES)
    devices = {d["id"]: d for d in document["devices"]}
    assert sorted(devices) == [f"cam-{i:04d}" for i in range(DEVICES)]
    active = sorted(d["models"][0]["active"] for d in devices.values())
    assert active == [1, 1, 2, 2]
    upgraded = next(d for d in devices.values() if d["models"][0]["active"] == 2)
    assert upgraded["models"][0]["previous"] == 1
    slots = {(s["version"], s["state"], s["active"]) for s in upgraded["slots"]}
    assert slots == {(1, "UNLOADED", False), (2, "READY", True)}
    assert upgraded["labels"]["note"] == EVIL  # data as reported; the page sets it as text
    assert upgraded["execution_provider"] == "CPUExecutionProvider"


def test_rollouts_show_phase_and_stage_progress(fabric: Fabric) -> None:
    assert fabric.history.wait_for(_serving_v2, WAIT_S)
    (rollout,) = get(fabric.url + "api/rollouts")["rollouts"]
    assert rollout["id"] == fabric.rollout_id
    assert rollout["target"] == "mlp:2"
    assert rollout["selected"] == DEVICES
    first, second = rollout["stages"]
    assert (first["planned"], first["state"]) == (2, "current")
    assert (second["planned"], second["assigned"], second["state"]) == (2, 0, "pending")
    # the controller marks devices INSTALLED at its next tick after their reports
    assert first["assigned"] == 2
    assert rollout["history"][0]["text"].startswith("started: mlp:2")


def test_metrics_chart_requests_errors_and_latency_per_model_and_pool(fabric: Fabric) -> None:
    def errors_charted(history: FleetHistory) -> bool:
        (series,) = history.series(3600, max(h.received_s for h in history.health().values()))
        return sum(p.errors for p in series.points) > 0

    assert fabric.history.wait_for(errors_charted, WAIT_S)  # mlp:2 fails 10 % of requests
    document = get(fabric.url + "api/metrics?window=3600")
    assert document["window_s"] == 3600
    (series,) = document["series"]
    assert (series["model"], series["pool"]) == ("mlp", "edge")
    assert len(series["points"]) == 60  # one point a minute
    assert sum(p["requests"] for p in series["points"]) > 0
    latest = [p for p in series["points"] if p["p99_ms"] is not None][-1]
    assert 0 < latest["p50_ms"] < latest["p99_ms"]
    assert len(get(fabric.url + "api/metrics?window=600")["series"][0]["points"]) == 60


def test_events_merge_device_rollout_and_audit_entries_newest_first(fabric: Fabric) -> None:
    assert fabric.history.wait_for(_serving_v2, WAIT_S)
    events = get(fabric.url + "api/events?limit=1000")["events"]
    assert [e["at_s"] for e in events] == sorted((e["at_s"] for e in events), reverse=True)
    kinds = {(e["source"], e["kind"]) for e in events}
    assert {("device", "SWITCHED"), ("audit", "model.push")} <= kinds
    assert ("audit", "rollout.start") in kinds
    assert any(e["source"] == "rollout" and e["subject"] == fabric.rollout_id for e in events)
    assert len(get(fabric.url + "api/events?limit=3")["events"]) == 3


def test_models_list_registry_versions_with_devices_serving_them(fabric: Fabric) -> None:
    assert fabric.history.wait_for(_serving_v2, WAIT_S)
    models = {m["ref"]: m for m in get(fabric.url + "api/models")["models"]}
    assert sorted(models) == ["mlp:1", "mlp:2"]
    assert models["mlp:2"]["serving_devices"] == 2


def test_the_page_and_its_assets_are_served_with_a_strict_content_policy(fabric: Fabric) -> None:
    with fetch(fabric.url) as response:
        page = response.read().decode()
        policy = response.headers["Content-Security-Policy"]
    assert '<script src="/static/dashboard.js"' in page
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    for asset in ("static/dashboard.js", "static/dashboard.css"):
        with fetch(fabric.url + asset) as response:
            assert response.status == 200


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("api/metrics?window=abc", "window='abc'"),
        ("api/metrics?window=7200", "(0, 3600]"),
        ("api/metrics?window=-5", "window='-5'"),
        ("api/metrics?window=nan", "window='nan'"),
        ("api/events?limit=0", "limit='0'"),
        ("api/events?limit=100000", "(0, 1000]"),
    ],
)
def test_bad_query_parameters_are_refused_with_what_was_expected(
    fabric: Fabric, query: str, expected: str
) -> None:
    status, body, _ = refused(fabric.url + query)
    assert status == 400
    assert expected in body["error"]
    assert "expected" in body["error"]


def test_unknown_paths_writes_and_foreign_hosts_are_refused(fabric: Fabric) -> None:
    status, body, _ = refused(fabric.url + "api/nothing")
    assert status == 404
    assert "/api/devices" in body["error"]
    status, body, headers = refused(fabric.url + "api/devices", method="POST")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")
    assert "read-only" in body["error"]
    # DNS rebinding: a page from another site resolving its name to 127.0.0.1
    status, body, _ = refused(fabric.url + "api/devices", {"Host": "evil.example:80"})
    assert status == 421
    assert "loopback" in body["error"]


def test_the_authorize_hook_refuses_api_requests_with_401(fabric: Fabric) -> None:
    data = DashboardData(StoreHome(fabric.home), fabric.server.fleet, fabric.history)
    seen: list[dict[str, str]] = []

    def authorize(headers: Mapping[str, str]) -> bool:
        seen.append(dict(headers))
        return headers.get("authorization") == "Bearer admin-token"

    with DashboardServer(data, authorize=authorize) as guarded:
        url = f"http://127.0.0.1:{guarded.port}/"
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            status, body, response_headers = refused(url + "api/devices", headers)
            assert status == 401
            assert "Bearer" in body["error"]
            assert response_headers["WWW-Authenticate"].startswith("Bearer")
        assert get(url + "api/devices", {"Authorization": "Bearer admin-token"})["total"] == 4
        with fetch(url) as response:  # the page holds no data
            assert response.status == 200
    assert seen[-1]["authorization"] == "Bearer admin-token"  # header names in lower case


def _store_serve(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EDGEFABRIC_HOME": str(home)}
    command = [sys.executable, "-m", "edgefabric.cli", "store", "serve", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_store_serve_refuses_a_bad_or_busy_dashboard_port_clearly(fabric: Fabric) -> None:
    done = _store_serve(fabric.home, "--broker", "mqtt://127.0.0.1:1", "--http-port", "70000")
    assert done.returncode == 2
    assert "expected a port number from 0 (pick a free one) to 65535, got '70000'" in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        done = _store_serve(fabric.home, "--broker", "mqtt://127.0.0.1:1", "--http-port", port)
    assert done.returncode == 1
    assert f"dashboard: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
