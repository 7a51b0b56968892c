"""A ``/metrics`` HTTP endpoint over one registry, with a bound port and a clean stop."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["MetricsEndpoint"]


class MetricsEndpoint:
    """Serves ``registry`` at ``http://address:port/metrics``; ``port`` 0 picks a free one."""

    def __init__(self, registry: CollectorRegistry, address: str = "127.0.0.1", port: int = 0):
        self._server, self._thread = start_http_server(port, addr=address, registry=registry)
        self.address = address
        self.port = int(self._server.server_port)
        self._closed = threading.Event()

    def close(self) -> None:
        """Stop answering and release the socket (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
