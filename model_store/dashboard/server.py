"""The dashboard's HTTP server: one static page and read-only JSON, on a stdlib threading server.

Routes (GET and HEAD only; anything else is 405)::

    /                     the page (static/index.html), with its script and style under /static/
    /api/devices          devices: online state, versions per model and slot, health
    /api/rollouts         rollouts with per-stage progress
    /api/metrics?window=S requests, errors, p50/p99 per model and pool over the last S seconds
    /api/events?limit=N   the newest N timeline events: devices, rollouts, audit log
    /api/models           the registry's versions

``authorize(headers) -> bool`` guards every ``/api/`` route: 401 when it says no or raises
``UnauthenticatedError``, 403 when it raises ``PermissionDeniedError`` (:mod:`.auth` has the
admin-token hook). The static files hold no data and are served to anyone who can connect, so
a page opened without credentials can still say what is missing. The default allows every
request, which is why the server binds loopback by default; it then also refuses ``Host``
headers that do not name a loopback host, so a web page on another site cannot read it through
DNS rebinding (ADR 0010). Given an ``ssl`` context it speaks HTTPS; the TLS handshake runs on
the connection's own thread, under the same timeout as the request (ADR 0016).

Each request runs on its own thread. The fleet view and the history are thread-safe; SQLite
connections are not shared between threads, so each request that reads the registry opens
its own and closes it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from edgefabric.errors import (
    EdgefabricError,
    InvalidInputError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from model_store.dashboard.history import FleetHistory, TimelineEvent
from model_store.dashboard.views import (
    audit_events,
    device_json,
    model_json,
    parse_positive,
    rollout_events,
    rollout_json,
    series_json,
)
from model_store.fleet_view import FleetView
from model_store.home import StoreHome
from model_store.rollout import RolloutStore
from model_store.store import ModelStore

__all__ = ["Authorize", "DashboardData", "DashboardServer", "allow_all"]

log = logging.getLogger(__name__)

Authorize = Callable[[Mapping[str, str]], bool]
"""Given the request's headers (names in lower case), whether to answer an API request; it may
raise ``UnauthenticatedError`` (401) or ``PermissionDeniedError`` (403) to say why not."""

_MAX_EVENTS = 1000
_DEFAULT_EVENTS = 200
_AUDIT_TAIL = 200
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_API = ("/api/devices", "/api/rollouts", "/api/metrics", "/api/events", "/api/models")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def allow_all(headers: Mapping[str, str]) -> bool:
    """The default :data:`Authorize`: every request (keep the server on loopback)."""
    return True


class DashboardData:
    """What the API shows, read from the fleet view, the history and the store home."""

    def __init__(
        self,
        home: StoreHome,
        fleet: FleetView,
        history: FleetHistory,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._home = home
        self._fleet = fleet
        self.history = history
        self._clock = clock

    @contextmanager
    def _store(self) -> Iterator[ModelStore]:
        store = ModelStore(self._home, actor="dashboard")
        try:
            yield store
        finally:
            store.close()

    def devices(self) -> dict[str, object]:
        """``/api/devices``."""
        rows = self._fleet.rows()
        health = self.history.health()
        return {
            "now_s": self._clock(),
            "total": len(rows),
            "online": sum(row.online for row in rows),
            "devices": [device_json(row, health.get(row.device_id)) for row in rows],
        }

    def rollouts(self) -> dict[str, object]:
        """``/api/rollouts``, newest first."""
        with self._store() as store:
            rollouts = RolloutStore(store.registry).list()
        rows = self._fleet.rows()
        documents = [
            rollout_json(r, [row.device_id for row in rows if r.spec.selects(row.labels)])
            for r in reversed(rollouts)
        ]
        return {"now_s": self._clock(), "rollouts": documents}

    def metrics(self, window_s: float) -> dict[str, object]:
        """``/api/metrics``."""
        now = self._clock()
        series = self.history.series(window_s, now)
        return {
            "now_s": now,
            "window_s": window_s,
            "resolution_s": self.history.resolution_s,
            "series": [series_json(s) for s in series],
        }

    def events(self, limit: int) -> dict[str, object]:
        """``/api/events``: newest first."""
        events: list[TimelineEvent] = self.history.events()
        with self._store() as store:
            events += rollout_events(RolloutStore(store.registry).list())
            try:
                events += audit_events(store.audit.entries()[-_AUDIT_TAIL:])
            except ValueError as error:  # a damaged log: `edgefabric audit verify` says more
                log.warning("dashboard: audit log not shown: %s", error)
        events.sort(key=lambda event: event.at_s, reverse=True)
        return {"now_s": self._clock(), "events": [e.to_json() for e in events[:limit]]}

    def models(self) -> dict[str, object]:
        """``/api/models``."""
        serving: dict[tuple[str, int], int] = {}
        for row in self._fleet.rows():
            for model in row.models:
                if model.active is not None:
                    key = (model.model, model.active)
                    serving[key] = serving.get(key, 0) + 1
        with self._store() as store:
            versions = store.registry.versions()
        return {"now_s": self._clock(), "models": [model_json(v, serving) for v in versions]}


@dataclass(frozen=True)
class _Reply:
    status: HTTPStatus
    body: bytes
    content_type: str
    headers: Mapping[str, str]


def _json(status: HTTPStatus, document: object, **headers: str) -> _Reply:
    body = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    return _Reply(status, body, "application/json", {"Cache-Control": "no-store", **headers})


def _error(status: HTTPStatus, message: str, **headers: str) -> _Reply:
    return _json(status, {"error": message, "status": status.value}, **headers)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _HttpServer(ThreadingHTTPServer):
    """A threading HTTP server that wraps accepted connections in TLS when given a context.

    The wrap does no I/O; the handshake happens on the request's thread (the handler's
    ``setup``), so a client that stalls it holds up only its own connection.
    """

    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        if self.tls is not None:
            connection = self.tls.wrap_socket(
                connection, server_side=True, do_handshake_on_connect=False
            )
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("dashboard: connection from %s failed", client_address, exc_info=True)


class DashboardServer:
    """The dashboard on ``address:port`` (0 picks a free port, see :attr:`port`), over HTTPS
    when given an ``ssl`` context (``edgefabric.security.tls.https_context``).

    ``start()`` serves on a thread of its own; ``stop()`` stops and closes the socket.
    """

    def __init__(
        self,
        data: DashboardData,
        *,
        address: str = "127.0.0.1",
        port: int = 0,
        authorize: Authorize = allow_all,
        request_timeout_s: float = 10.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.data = data
        self.authorize = authorize
        self._loopback = _is_loopback(address)
        handler = _handler_class(self, request_timeout_s)
        try:
            self._server = _HttpServer((address, port), handler)
        except OSError as error:
            raise OSError(f"dashboard: cannot listen on {address}:{port}: {error}") from error
        self._server.tls = tls
        self._thread: threading.Thread | None = None
        if not self._loopback and authorize is allow_all:
            log.warning(
                "the dashboard listens on %s without authorisation: anyone who can reach it "
                "sees the fleet; keep it on loopback or put an authorising proxy in front",
                address,
            )

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port/`` (``https://`` over TLS)."""
        host = str(self._server.server_address[0])
        scheme = "https" if self._server.tls is not None else "http"
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def start(self) -> None:
        """Serve requests on a background thread."""
        if self._thread is not None:
            raise RuntimeError("the dashboard was started already")
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dashboard-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._server.shutdown()
            thread.join()
        self._server.server_close()

    def __enter__(self) -> DashboardServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- routing (on the request's thread) ---------------------------------------------------

    def reply(self, method: str, target: str, headers: Mapping[str, str]) -> _Reply:
        """The answer to one request."""
        refused = self._refuse(method, headers)
        if refused is not None:
            return refused
        parts = urlsplit(target)
        static = _STATIC.get(parts.path)
        if static is not None:
            name, content_type = static
            body = resources.files("model_store.dashboard").joinpath("static", name).read_bytes()
            return _Reply(HTTPStatus.OK, body, content_type, {"Cache-Control": "no-cache"})
        if parts.path not in _API:
            return _error(
                HTTPStatus.NOT_FOUND,
                f"no page {parts.path!r}: the dashboard is at /, its API at {', '.join(_API)}",
            )
        refused = self._authorize(headers)
        if refused is not None:
            return refused
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        return self._answer_api(parts.path, query)

    def _authorize(self, headers: Mapping[str, str]) -> _Reply | None:
        """401 or 403 when the hook refuses the request, else ``None``."""
        challenge = {"WWW-Authenticate": 'Bearer realm="edgefabric"'}
        try:
            if self.authorize(headers):
                return None
        except UnauthenticatedError as error:
            return _error(HTTPStatus.UNAUTHORIZED, f"not authorised: {error}", **challenge)
        except PermissionDeniedError as error:
            return _error(HTTPStatus.FORBIDDEN, f"forbidden: {error}")
        return _error(
            HTTPStatus.UNAUTHORIZED,
            "not authorised: send an admin bearer token (Authorization: Bearer TOKEN)",
            **challenge,
        )

    def _answer_api(self, path: str, query: Mapping[str, str]) -> _Reply:
        try:
            return _json(HTTPStatus.OK, self._api(path, query))
        except InvalidInputError as error:
            return _error(HTTPStatus.BAD_REQUEST, str(error))
        except (EdgefabricError, OSError) as error:
            log.warning("dashboard %s failed: %s", path, error)
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, f"{path}: {error}")
        except Exception:
            correlation = uuid.uuid4().hex[:12]
            log.exception("dashboard %s failed unexpectedly (id %s)", path, correlation)
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error (id {correlation})")

    def _refuse(self, method: str, headers: Mapping[str, str]) -> _Reply | None:
        """A refusal for a method that would change something, or a foreign Host on loopback."""
        if method not in ("GET", "HEAD"):
            return _error(
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"{method} is not allowed: the dashboard is read-only (GET, HEAD)",
                Allow="GET, HEAD",
            )
        host = headers.get("host", "")
        if self._loopback and not _is_loopback(urlsplit(f"//{host}").hostname or ""):
            return _error(
                HTTPStatus.MISDIRECTED_REQUEST,
                f"Host {host!r} is not a loopback name: this dashboard listens on loopback "
                f"only; open it as {self.url}",
            )
        return None

    def _api(self, path: str, query: Mapping[str, str]) -> object:
        data = self.data

        def metrics() -> object:
            retention = data.history.retention_s
            window = parse_positive(
                "window", query.get("window"), default=3600.0, maximum=retention
            )
            return data.metrics(window)

        def events() -> object:
            limit = parse_positive(
                "limit", query.get("limit"), default=_DEFAULT_EVENTS, maximum=_MAX_EVENTS
            )
            return data.events(int(limit))

        routes: dict[str, Callable[[], object]] = {
            "/api/devices": data.devices,
            "/api/rollouts": data.rollouts,
            "/api/metrics": metrics,
            "/api/events": events,
            "/api/models": data.models,
        }
        return routes[path]()


def _handler_class(server: DashboardServer, timeout_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = timeout_s  # a client that stops sending mid-request is dropped
        server_version = "edgefabric-dashboard"
        sys_version = ""

        def setup(self) -> None:
            if isinstance(self.request, ssl.SSLSocket):
                self.request.settimeout(timeout_s)
                self.request.do_handshake()  # a failure is logged by the server's handle_error
            super().setup()

        def do_GET(self) -> None:
            self._answer()

        def do_HEAD(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def do_PUT(self) -> None:
            self._answer()

        def do_DELETE(self) -> None:
            self._answer()

        def do_PATCH(self) -> None:
            self._answer()

        def _answer(self) -> None:
            headers = {key.lower(): value for key, value in self.headers.items()}
            reply = server.reply(self.command, self.path, headers)
            self.send_response(reply.status)
            for name, value in {**_SECURITY_HEADERS, **reply.headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dashboard %s: " + format, self.address_string(), *args)

    return Handler
