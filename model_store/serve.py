"""``edgefabric store serve``: answer TUF metadata and artifact requests over MQTT.

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

from edgefabric.mqtt import BrokerAddress, MqttClient
from model_store.distribution import DEFAULT_CHUNK_SIZE, DistributionServer, RepoResponder
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


class StoreServer:
    """The store's long-running side: distribution over MQTT and metadata freshness."""

    def __init__(self, store: ModelStore, options: StoreServerOptions) -> None:
        self._store = store
        self._options = options
        self._repository = store.tuf()
        self._mqtt = MqttClient(options.broker, options.client_id)
        responder = RepoResponder(
            self._repository.read_metadata, store.blobs.open, options.chunk_size
        )
        self._distribution = DistributionServer(self._mqtt, responder)
        self._stopping = threading.Event()

    def start(self) -> None:
        """Connect, refresh metadata that is about to expire, and start answering."""
        self.refresh()
        self._mqtt.connect()
        self._distribution.start()

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
        while not self._stopping.wait(self._options.refresh_interval_s):
            self.refresh()
        self.stop()

    def stop(self) -> None:
        """Stop answering and disconnect."""
        self._stopping.set()
        self._distribution.stop()
        self._mqtt.close()
