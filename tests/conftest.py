"""Shared fixtures: sample model repositories and a gateway running on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edgefabric.runtime.base import Runtime
from edgefabric.samples import write_sample_repository
from gateway.app import Gateway
from gateway.settings import GatewaySettings

T = TypeVar("T")


@pytest.fixture(scope="session")
def sample_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only Triton-layout repository with every sample model."""
    return write_sample_repository(tmp_path_factory.mktemp("repo"), identities=True)


@pytest.fixture
def writable_repository(sample_repository: Path, tmp_path: Path) -> Path:
    """A private copy of the sample repository that a test may change."""
    return Path(shutil.copytree(sample_repository, tmp_path / "repo"))


class GatewayThread:
    """A gateway on its own event loop in a background thread, for blocking clients."""

    def __init__(self, settings: GatewaySettings, runtime: Runtime | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.gateway = Gateway(settings, runtime)
        self.call(self.gateway.start)

    def call(self, factory: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run a coroutine on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(factory(*args), self.loop).result(timeout=60)

    def submit(self, factory: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> Future[T]:
        """Start a coroutine on the gateway's loop without waiting."""
        return asyncio.run_coroutine_threadsafe(factory(*args), self.loop)

    @property
    def address(self) -> str:
        """host:port for tritonclient."""
        return f"127.0.0.1:{self.gateway.port}"

    def close(self) -> None:
        """Stop the gateway (if running) and the loop."""
        self.call(self.gateway.stop, 1.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def settings_for(repository: Path, **overrides: Any) -> GatewaySettings:
    """Gateway settings for tests: free ports, metrics off unless asked."""
    values: dict[str, Any] = {
        "model_repository": repository,
        "grpc_port": 0,
        "metrics_port": -1,
        "intra_op_threads": 1,
    }
    values.update(overrides)
    return GatewaySettings(**values)


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., GatewayThread]]:
    """Factory starting gateways that are stopped after the test."""
    started: list[GatewayThread] = []

    def start(repository: Path, runtime: Runtime | None = None, **overrides: Any) -> GatewayThread:
        running = GatewayThread(settings_for(repository, **overrides), runtime)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


@pytest.fixture(scope="module")
def shared_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    """One gateway over the sample repository, shared by a module's read-only tests."""
    repository = write_sample_repository(tmp_path_factory.mktemp("shared"), identities=True)
    running = GatewayThread(settings_for(repository))
    yield running
    running.close()


# MQTT: private mosquitto brokers and connected clients (tests/mqtt_broker.py).
from tests.mqtt_broker import connect_mqtt, mqtt_broker, shared_mqtt_broker  # noqa: E402, F401
