"""``edgefabric store serve``: TUF files over MQTT, the fleet's reports, the rollout controller.

The process keeps the online role fresh: it re-signs the timestamp (and anything else about
to expire) before devices would see it expire, checking every ``refresh_interval_s``.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType

from edgefabric.mqtt import BrokerAddress, MqttClient, MqttTls
from edgefabric.telemetry.endpoint import MetricsEndpoint
from edgefabric.telemetry.store import StoreMetrics
from model_store.controller import RolloutController
from model_store.dashboard import (
    Authorize,
    DashboardData,
    DashboardServer,
    FleetHistory,
    allow_all,
)
from model_store.distribution import DEFAULT_CHUNK_SIZE, DistributionServer, RepoResponder
from model_store.fleet_db import fleet_database_path
from model_store.fleet_view import FleetView
from model_store.store import ModelStore

__all__ = ["StoreServer", "StoreServerOptions"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreServerOptions:
    """Knobs of the serving process."""

    broker: BrokerAddress
    client_id: str = "edgefabric-store"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    refresh_interval_s: float = 600.0
    refresh_within: timedelta = timedelta(hours=6)
    controller_interval_s: float = 0.5
    # The fleet dashboard (model_store.dashboard): None serves none, 0 picks a free port.
    http_port: int | None = None
    http_address: str = "127.0.0.1"
    tls: MqttTls | None = None  # CA, client certificate and key for an mqtts:// broker
    metrics_address: str = "127.0.0.1"
    metrics_port: int = -1  # Prometheus /metrics; 0 picks a free port, -1 serves none


class StoreServer:
    """The store's long-running side: distribution over MQTT and metadata freshness."""

    def __init__(
        self, store: ModelStore, options: StoreServerOptions, *, authorize: Authorize = allow_all
    ) -> None:
        self._store = store
        self._options = options
        self._repository = store.tuf()
        self._mqtt = MqttClient(options.broker, options.client_id, tls=options.tls)
        self.fleet = FleetView(self._mqtt, fleet_database_path(store.home))
        self.metrics = StoreMetrics(self.fleet.devices)
        self.metrics_endpoint: MetricsEndpoint | None = None
        responder = RepoResponder(
            self._repository.read_metadata,
            store.blobs.open,
            options.chunk_size,
            on_answer=self.metrics.on_answer,
        )
        self._distribution = DistributionServer(self._mqtt, responder)
        self._stopping = threading.Event()
        self._controller_thread: threading.Thread | None = None
        self._authorize = authorize
        self.history = FleetHistory()
        self.fleet.add_listener(self.history.observe)  # before start: the retained replay too
        self.dashboard: DashboardServer | None = None

    def start(self) -> None:
        """Connect, refresh metadata about to expire, answer requests, run the controller,
        serve the dashboard (its port is taken first, so a busy one fails before anything)."""
        if self._options.http_port is not None:
            data = DashboardData(self._store.home, self.fleet, self.history)
            self.dashboard = DashboardServer(
                data,
                address=self._options.http_address,
                port=self._options.http_port,
                authorize=self._authorize,
            )
        try:
            self.refresh()
            self._mqtt.connect()
        except BaseException:
            if self.dashboard is not None:
                self.dashboard.stop()  # closes its socket
            raise
        if self._options.metrics_port >= 0:
            self.metrics_endpoint = MetricsEndpoint(
                self.metrics.registry, self._options.metrics_address, self._options.metrics_port
            )
        self._distribution.start()
        self.fleet.start()
        self._controller_thread = threading.Thread(
            target=self._run_controller, name="rollout-controller", daemon=True
        )
        self._controller_thread.start()
        if self.dashboard is not None:
            self.dashboard.start()

    def _run_controller(self) -> None:
        """The controller's thread, with a registry connection of its own (SQLite's rule)."""
        store = ModelStore(self._store.home, actor="controller")
        try:
            controller = RolloutController(
                store, self._mqtt, self.fleet, on_progress=self.metrics.on_rollout
            )
            controller.run(self._stopping, self._options.controller_interval_s)
        finally:
            store.close()

    def refresh(self) -> bool:
        """Re-sign what expires within ``refresh_within``; True when anything was written."""
        refreshed = self._repository.refresh_timestamp(within=self._options.refresh_within)
        if refreshed:
            log.info("re-signed metadata that was about to expire")
        return refreshed

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, refreshing metadata on schedule."""

        def request_stop(signum: int, frame: FrameType | None) -> None:
            self._stopping.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, request_stop)
        self.start()
        print(f"edgefabric store serving the repository on {self._options.broker.url}", flush=True)
        if self.dashboard is not None:
            print(f"edgefabric store dashboard on {self.dashboard.url}", flush=True)
        while not self._stopping.wait(self._options.refresh_interval_s):
            self.refresh()
        self.stop()

    def stop(self) -> None:
        """Stop the controller, stop answering, save the fleet table and disconnect."""
        self._stopping.set()
        if self.dashboard is not None:
            self.dashboard.stop()
        if self._controller_thread is not None:
            self._controller_thread.join(timeout=30)
        self.fleet.stop()
        self._distribution.stop()
        self._mqtt.close()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.close()
