"""One thread driving the network I/O of many :class:`~edgefabric.mqtt.MqttClient` objects.

By default each ``MqttClient`` runs paho's own network thread, which waits with ``select()``:
that cannot watch a descriptor numbered 1024 or above, and every client holds three (its socket
and a wake-up pair), so one process fails at about 340 clients. A process that holds hundreds of
connections (the fleet simulator: one per simulated device) creates one :class:`MqttLoop` and
passes ``loop=`` to each client instead; one thread and one epoll set then serve them all, and
the handlers of every client run on that thread, one at a time.

Reconnections run on the loop thread too: a broker that never answers a TCP connect stalls
every client of the loop for up to the connect timeout. Back-off per client is as configured
(``reconnect_min_delay_s`` doubling up to ``reconnect_max_delay_s``).

The loop only calls the clients' ``_io_*`` hooks (:class:`LoopMember`), so paho stays inside
``edgefabric.mqtt``. Sockets are registered and written on the loop thread only: other threads
post what happened (a socket opened or closed, bytes waiting) to an inbox and wake the loop.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["LoopMember", "MqttLoop"]

logger = logging.getLogger(__name__)


class LoopMember(Protocol):
    """What the loop needs from a client; implemented by ``MqttClient`` (loop thread only)."""

    client_id: str

    @property
    def connected(self) -> bool:
        """Whether the client holds an acknowledged connection."""
        ...

    def _io_socket(self) -> socket.socket | None:
        """The connection's socket, or None while disconnected."""
        ...

    def _io_read(self) -> None:
        """Read and handle what arrived."""
        ...

    def _io_write(self) -> bool:
        """Write what is queued; whether bytes are still waiting."""
        ...

    def _io_misc(self) -> None:
        """Keepalive: send a PINGREQ when due, drop a connection whose PINGRESP is late."""
        ...

    def _io_reconnect(self) -> None:
        """Open a new connection (OSError when the broker cannot be reached)."""
        ...

    def _io_reconnect_delays(self) -> tuple[float, float]:
        """The first and the longest wait between reconnection attempts, in seconds."""
        ...


class _Op(enum.Enum):
    ATTACH = "attach"
    DETACH = "detach"
    OPENED = "opened"
    CLOSED = "closed"
    WRITE = "write"


class MqttLoop:
    """A network thread for many clients: ``start()``, hand it to clients, ``close()`` last.

    Close the clients before the loop: ``MqttClient.close()`` needs the loop to send its
    DISCONNECT. ``tick_s`` is how often keepalives are checked.
    """

    def __init__(self, *, name: str = "mqtt-loop", tick_s: float = 1.0) -> None:
        if not tick_s > 0:
            raise ValueError(f"tick_s must be positive, got {tick_s}")
        self.name = name
        self._tick_s = tick_s
        self._lock = threading.Lock()
        self._inbox: list[tuple[_Op, LoopMember, socket.socket | None]] = []
        self._woken = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._thread_ident: int | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        # Owned by the loop thread:
        self._members: set[LoopMember] = set()
        self._sockets: dict[LoopMember, socket.socket] = {}
        self._writing: set[LoopMember] = set()
        self._flush: set[LoopMember] = set()
        self._retry_at: dict[LoopMember, float] = {}
        self._delay_s: dict[LoopMember, float] = {}

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the network thread."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"MQTT loop {self.name!r} was started already")
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and release the loop's own descriptors (idempotent)."""
        with self._lock:
            thread, self._stopping = self._thread, True
        self._wake()
        if thread is not None and thread.ident != threading.get_ident():
            thread.join(timeout_s)
        if thread is None or not thread.is_alive():
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def __enter__(self) -> MqttLoop:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Whether the network thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping

    @property
    def thread_ident(self) -> int | None:
        """The network thread's identifier, once it runs."""
        return self._thread_ident

    # -- posted by clients (any thread) ------------------------------------------------------

    def _attach(self, member: LoopMember) -> None:
        self._post(_Op.ATTACH, member)

    def _detach(self, member: LoopMember) -> None:
        self._post(_Op.DETACH, member)

    def _opened(self, member: LoopMember, sock: socket.socket) -> None:
        self._post(_Op.OPENED, member, sock)

    def _closed(self, member: LoopMember, sock: socket.socket) -> None:
        self._post(_Op.CLOSED, member, sock)

    def _wants_write(self, member: LoopMember) -> None:
        self._post(_Op.WRITE, member)

    def _post(self, op: _Op, member: LoopMember, sock: socket.socket | None = None) -> None:
        with self._lock:
            self._inbox.append((op, member, sock))
            if self._woken or threading.get_ident() == self._thread_ident:
                return  # the loop drains the inbox before it waits again
            self._woken = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already full of wake-ups, or closed
            self._wake_w.send(b"\x00")

    # -- the loop thread ---------------------------------------------------------------------

    def _run(self) -> None:
        self._thread_ident = threading.get_ident()
        next_tick = time.monotonic() + self._tick_s
        try:
            while not self._stopping:
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self._tick_s
                    self._keepalive()
                self._reconnect_due(now)
                self._flush_writes()
                with self._lock:
                    busy = bool(self._inbox)
                due = min(next_tick, min(self._retry_at.values(), default=math.inf))
                timeout = 0.0 if busy else max(0.0, due - time.monotonic())
                events = self._selector.select(timeout)
                self._drain()
                for key, mask in events:
                    if key.data is None:
                        self._clear_wake()
                    else:
                        self._serve(key.data, key.fileobj, mask)
        except Exception:  # pragma: no cover - a bug here would silence every client
            logger.exception("MQTT loop %s failed", self.name)
            raise

    def _clear_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _drain(self) -> None:
        """Apply what other threads (and handlers) posted, in order."""
        while True:
            with self._lock:
                inbox, self._inbox = self._inbox, []
                self._woken = False
            if not inbox:
                return
            for op, member, sock in inbox:
                self._apply(op, member, sock)

    def _apply(self, op: _Op, member: LoopMember, sock: socket.socket | None) -> None:
        if op is _Op.ATTACH:
            self._members.add(member)
        elif op is _Op.DETACH:
            self._members.discard(member)
            self._retry_at.pop(member, None)
            self._delay_s.pop(member, None)
        elif op is _Op.OPENED and sock is not None:
            self._forget_socket(member)
            if sock.fileno() >= 0:  # not closed again already
                self._selector.register(sock, selectors.EVENT_READ, member)
                self._sockets[member] = sock
        elif op is _Op.CLOSED and sock is not None:
            if self._sockets.get(member) is sock:
                self._forget_socket(member)
            if member in self._members and member not in self._retry_at:
                self._schedule_reconnect(member)
        elif op is _Op.WRITE:
            self._flush.add(member)

    def _forget_socket(self, member: LoopMember) -> None:
        sock = self._sockets.pop(member, None)
        self._writing.discard(member)
        if sock is not None:
            # KeyError: never registered (closed before the loop saw it opened).
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)

    def _serve(self, member: LoopMember, sock: object, mask: int) -> None:
        if member._io_socket() is not sock:
            return  # stale: the socket was closed since select() reported it
        if mask & selectors.EVENT_READ:
            self._guard(member, member._io_read)
        if mask & selectors.EVENT_WRITE and member._io_socket() is sock:
            self._flush.add(member)

    def _flush_writes(self) -> None:
        """Write for every client with bytes waiting (picking up new posts as it goes)."""
        self._drain()
        while self._flush:
            member = self._flush.pop()
            sock = self._sockets.get(member)
            if sock is None or member._io_socket() is not sock:
                continue
            more = self._guard(member, member._io_write)
            if self._sockets.get(member) is sock:
                self._want_write(member, sock, bool(more))
            self._drain()

    def _want_write(self, member: LoopMember, sock: socket.socket, want: bool) -> None:
        if want == (member in self._writing):
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
        self._selector.modify(sock, events, member)
        if want:
            self._writing.add(member)
        else:
            self._writing.discard(member)

    def _keepalive(self) -> None:
        for member in list(self._members):
            if member.connected:
                self._delay_s.pop(member, None)  # a connection that held resets the back-off
            if member._io_socket() is not None:
                self._guard(member, member._io_misc)

    def _schedule_reconnect(self, member: LoopMember) -> None:
        first, longest = member._io_reconnect_delays()
        delay = self._delay_s.get(member, first)
        self._delay_s[member] = min(delay * 2, longest)
        self._retry_at[member] = time.monotonic() + delay

    def _reconnect_due(self, now: float) -> None:
        for member in [m for m, at in self._retry_at.items() if at <= now]:
            del self._retry_at[member]
            try:
                member._io_reconnect()
            except (OSError, ValueError) as error:
                logger.info("reconnecting %s failed: %s", member.client_id, error)
                self._schedule_reconnect(member)
            except Exception:
                logger.exception("reconnecting %s failed", member.client_id)
                self._schedule_reconnect(member)

    @staticmethod
    def _guard(member: LoopMember, call: Callable[[], object]) -> object:
        try:
            return call()
        except Exception:
            logger.exception("MQTT client %s failed in the network loop", member.client_id)
            return None
