"""``edgefabric store serve``: TUF files over MQTT, the fleet's reports, the rollout controller.

It also publishes the gateways' route table (:mod:`model_store.routes`) when it starts.

The process keeps the online role fresh: it re-signs the timestamp (and anything else about
to expire) before devices would see it expire, checking every ``refresh_interval_s``.

The dashboard's exposure is checked when the options are made: without ``http_auth`` it stays
on loopback, and tokens are not taken in plaintext from the network, unless ``http_insecure``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Literal

from edgefabric import topics
from edgefabric.errors import InvalidInputError, TransportError
from edgefabric.mqtt import BrokerAddress, Message, MqttClient, MqttTls
from edgefabric.security.tls import https_context
from edgefabric.security.tokens import TokenStore, TokenVerifier
from edgefabric.telemetry.endpoint import MetricsEndpoint
from edgefabric.telemetry.store import StoreMetrics
from model_store.controller import RolloutController
from model_store.dashboard import (
    Authorize,
    DashboardData,
    DashboardServer,
    FleetHistory,
    allow_all,
    check_dashboard_exposure,
    decode_gateway_stats,
    require_admin,
)
from model_store.distribution import DEFAULT_CHUNK_SIZE, DistributionServer, RepoResponder
from model_store.fleet_db import fleet_database_path
from model_store.fleet_view import FleetView
from model_store.routes import publish_routes
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
    # "required": the dashboard's API takes admin bearer tokens from tokens.sqlite3 in the home.
    http_auth: Literal["none", "required"] = "none"
    http_tls_cert: Path | None = None  # with http_tls_key: the dashboard speaks HTTPS
    http_tls_key: Path | None = None
    http_tls_client_ca: Path | None = None  # clients must present a certificate it signed
    http_insecure: bool = False  # allow a dashboard reachable from the network without both
    tls: MqttTls | None = None  # CA, client certificate and key for an mqtts:// broker
    metrics_address: str = "127.0.0.1"
    metrics_port: int = -1  # Prometheus /metrics; 0 picks a free port, -1 serves none

    def __post_init__(self) -> None:
        if (self.http_tls_cert is None) != (self.http_tls_key is None):
            raise ValueError(
                "the dashboard's TLS needs both --tls-cert FILE and --tls-key FILE; got only "
                f"{'--tls-cert' if self.http_tls_key is None else '--tls-key'}"
            )
        if self.http_tls_client_ca is not None and self.http_tls_cert is None:
            raise ValueError(
                "--tls-client-ca needs --tls-cert and --tls-key: client certificates are only "
                "checked over TLS"
            )
        if self.http_auth not in ("none", "required"):
            raise ValueError(f"http_auth: expected 'none' or 'required', got {self.http_auth!r}")
        if self.http_port is not None:
            check_dashboard_exposure(
                self.http_address,
                auth=self.http_auth == "required",
                tls=self.http_tls_cert is not None,
                insecure=self.http_insecure,
            )


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
        options = self._options
        if options.http_port is not None:
            tls = None
            if options.http_tls_cert is not None and options.http_tls_key is not None:
                tls = https_context(
                    options.http_tls_cert, options.http_tls_key, options.http_tls_client_ca
                )
            data = DashboardData(self._store.home, self.fleet, self.history)
            self.dashboard = DashboardServer(
                data,
                address=options.http_address,
                port=options.http_port,
                authorize=self._dashboard_authorize(),
                tls=tls,
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
        self._publish_routes()
        self._controller_thread = threading.Thread(
            target=self._run_controller, name="rollout-controller", daemon=True
        )
        self._controller_thread.start()
        if self.dashboard is not None:
            # Gateways' routing statistics: the charts of pools devices never report.
            self._mqtt.subscribe(topics.ALL_GATEWAY_STATS, self._on_gateway_stats, qos=0)
            self.dashboard.start()

    def _publish_routes(self) -> None:
        """The gateways' route table, again (retained): a broker that lost it gets it back, and
        a change made without ``route set --broker`` goes out now."""
        try:
            published = publish_routes(self._store, self._mqtt)
        except TransportError as exc:
            log.warning("route table not republished: %s", exc)
            return
        if published:
            log.info("route table %d published on %s", published, topics.ROUTES)

    def _on_gateway_stats(self, message: Message) -> None:
        """One gateway's report (on the MQTT thread): into the dashboard's history."""
        try:
            gateway_id, stats = decode_gateway_stats(message.topic, message.payload)
        except InvalidInputError as exc:
            log.warning("dashboard: %s", exc)
            return
        self.history.observe_gateway(gateway_id, stats, time.time())

    def _dashboard_authorize(self) -> Authorize:
        """The hook given to the constructor, else admin tokens when auth is required."""
        if self._authorize is not allow_all or self._options.http_auth != "required":
            return self._authorize
        tokens = TokenStore.in_home(self._store.home.root)
        if not tokens.path.exists():
            log.warning(
                "dashboard auth required but %s holds no tokens yet: every API request is "
                "refused until `edgefabric token create --role admin` makes one",
                tokens.path,
            )
        return require_admin(TokenVerifier(tokens))

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
