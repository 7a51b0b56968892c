"""The fleet dashboard in headless Chromium (Debian's ``chromium`` and ``chromium-driver``,
driven by Selenium) against ``edgefabric store serve --http-port 0`` with simulated devices and a
rollout. A screenshot is kept in the test's tmp dir and copied to ``tests/artifacts/``.

A missing Chromium fails the test with the install hint rather than skipping it: ``make test``
installs it (``make browser``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from edgefabric import topics
from edgefabric.desired import load_public_key
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress, MqttClient
from edgefabric.samples import mlp_model
from edgefabric.wire.v1.fleet_pb2 import Event
from model_store.home import StoreHome
from model_store.serve import StoreServer, StoreServerOptions
from model_store.sim_device import Behaviour
from model_store.simulate import FleetSimulator, SimulationSettings
from model_store.store import ModelStore
from tests.cli import run_edgefabric

pytestmark = pytest.mark.e2e

CHROMIUM = Path(os.environ.get("EDGEFABRIC_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("EDGEFABRIC_CHROMEDRIVER", "/usr/bin/chromedriver"))
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
DEVICES = 4
WAIT_S = 60.0
EVIL_LABEL = "<img src=x onerror=\"document.title='pwned'\">"
EVIL_MESSAGE = "<script>document.title='pwned'</script><b>bold?</b>"


def _chromium() -> Iterator[webdriver.Chrome]:
    for binary in (CHROMIUM, CHROMEDRIVER):
        if not binary.exists():
            pytest.fail(
                f"{binary} is missing: the dashboard test drives Debian's headless Chromium; "
                "install it with `make browser` (apt-get install chromium chromium-driver)"
            )
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--window-size=1400,1600",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    yield from _chromium()


@pytest.fixture
def store_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    run_edgefabric(home, "keys", "init")
    for version, hidden in ((1, 16), (2, 24)):
        path = tmp_path / f"mlp{version}.onnx"
        path.write_bytes(mlp_model(hidden=hidden).SerializeToString())
        run_edgefabric(home, "model", "push", str(path), "--name", "mlp")
    return home


def _learn_devices(home: Path, broker: PrivateBroker) -> None:
    """Run the store in-process until it has saved every device (``rollout start`` reads it)."""
    store = ModelStore(StoreHome(home))
    server = StoreServer(store, StoreServerOptions(BrokerAddress.parse(broker.url), "learner"))
    server.start()
    try:
        online = lambda views: sum(v.online for v in views.values()) == DEVICES  # noqa: E731
        assert server.fleet.wait_for(online, WAIT_S)
    finally:
        server.stop()
        store.close()


def _serve(home: Path, broker: PrivateBroker) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "EDGEFABRIC_HOME": str(home)}
    command = [sys.executable, "-m", "edgefabric.cli", "store", "serve", "--broker", broker.url]
    process = subprocess.Popen(
        [*command, "--http-port", "0"], env=env, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert "serving the repository" in process.stdout.readline()
    line = process.stdout.readline()
    found = re.search(r"dashboard on (http://127\.0\.0\.1:\d+/)", line)
    assert found, line
    return process, found.group(1)


# The page redraws every second; one script reads it at once, between two redraws.
_SNAPSHOT = """
const all = (selector) => Array.from(document.querySelectorAll(selector));
const texts = (selector) => all(selector).map((node) => node.textContent);
return {
  devices: all("#devices tbody tr").map((row) => row.dataset.device),
  versions: texts("#devices td.version"),
  states: texts("#devices .badge"),
  labels: texts("#devices .label"),
  summary: document.getElementById("summary").textContent,
  rollouts: all(".rollout").map((card) => ({
    id: card.dataset.rollout,
    text: card.textContent,
    bars: card.querySelectorAll(".stage svg").length,
  })),
  latency_marks: all(".chart svg.latency polyline, .chart svg.latency circle").length,
  events: texts("#events li .text"),
  images: document.getElementsByTagName("img").length,
  markup: all("#devices b, #devices script, #events b, #events script").length,
  problem: document.getElementById("problem").textContent,
  title: document.title,
};
"""


def _snapshot(driver: WebDriver) -> dict[str, Any]:
    result: dict[str, Any] = driver.execute_script(_SNAPSHOT)
    return result


def test_the_dashboard_shows_devices_versions_rollout_charts_and_events(
    store_home: Path, tmp_path: Path, browser: webdriver.Chrome
) -> None:
    with PrivateBroker(tmp_path / "mosquitto") as broker:
        settings = SimulationSettings(
            broker=broker.url,
            devices=DEVICES,
            prefix="cam",
            labels={"site": "plant-{i%2}", "note": EVIL_LABEL},
            serving={"mlp": 1},
            behaviour=Behaviour(error_rates={("mlp", 2): 0.1}, requests_per_s=100.0),
            health_interval_s=0.25,
        )
        public_key = load_public_key((store_home / "controller.pub").read_bytes())
        with FleetSimulator(settings, public_key=public_key):
            _learn_devices(store_home, broker)
            out = run_edgefabric(
                store_home, "rollout", "start", "mlp:2", "--stages", "50%,100%", "--bake", "1h"
            )
            rollout_id = out.split()[1].rstrip(":")
            process, url = _serve(store_home, broker)
            try:
                with MqttClient(BrokerAddress.parse(broker.url), "evil-reporter") as reporter:
                    evil = Event(
                        device_id="cam-0000",
                        at_ms=int(time.time() * 1000),
                        kind=Event.REJECTED,
                        message=EVIL_MESSAGE,
                        event_id=1_000_000,
                    )
                    reporter.publish(topics.device_events("cam-0000"), evil.SerializeToString())
                _check_page(browser, url, rollout_id, tmp_path)
            finally:
                process.terminate()
                process.wait(timeout=30)
                assert process.stdout is not None
                process.stdout.close()


def _check_page(driver: webdriver.Chrome, url: str, rollout_id: str, tmp_path: Path) -> None:
    driver.get(url + "?refresh_s=1")

    def settled(d: webdriver.Chrome) -> dict[str, Any] | Literal[False]:
        page = _snapshot(d)
        done = (
            sorted(page["versions"]) == ["v1", "v1", "v2", "v2"]
            and page["latency_marks"] > 0
            and any(EVIL_MESSAGE in text for text in page["events"])
        )
        return page if done else False

    try:
        page = WebDriverWait(driver, WAIT_S).until(settled)
    except TimeoutException:
        driver.save_screenshot(str(tmp_path / "dashboard-timeout.png"))
        pytest.fail(f"the page did not settle in {WAIT_S:g} s; it shows: {_snapshot(driver)}")
    screenshot = tmp_path / "dashboard.png"
    assert driver.save_screenshot(str(screenshot))
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(screenshot, ARTIFACTS / "dashboard.png")

    # devices, their online state and versions
    assert sorted(set(page["devices"])) == [f"cam-{i:04d}" for i in range(DEVICES)]
    assert page["states"] == ["online"] * DEVICES
    assert page["summary"] == f"{DEVICES} devices, {DEVICES} online"
    # the rollout, with a progress bar per stage
    (rollout,) = page["rollouts"]
    assert rollout["id"] == rollout_id
    assert "mlp:2" in rollout["text"]
    assert "stage 1 (50%)" in rollout["text"]
    assert rollout["bars"] == 2
    # device-reported strings are text, never markup
    assert f"note={EVIL_LABEL}" in page["labels"]
    assert (page["images"], page["markup"], page["title"]) == (0, 0, "edgefabric fleet")
    assert page["problem"] == ""
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []  # no script errors, no Content-Security-Policy violations
