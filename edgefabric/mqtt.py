"""A small, typed MQTT 5 client: the one module in the project that imports paho-mqtt.

Every paho failure leaves this module as :class:`~edgefabric.errors.TransportError`, naming the
broker and what failed. Malformed arguments (a wildcard in a publish topic, QoS 3) raise
``ValueError``; using a client before ``connect()`` or after ``close()`` raises ``RuntimeError``.

Threading: paho runs the network loop in a thread of its own (``loop_start``). Message handlers
and connection callbacks run on that thread, one at a time: keep them short and hand long work to
another thread. The blocking calls -- :meth:`MqttClient.request`, ``publish(wait=True)`` -- cannot
wait for the thread that runs them, so they raise ``TransportError`` there; ``subscribe`` called
from a handler sends the SUBSCRIBE without waiting for the broker's acknowledgement.

After a dropped connection paho reconnects by itself (exponential back-off); the client then
subscribes again to every filter it holds, and requests waiting for a reply fail at once. It
reports itself connected again (``connected``, ``wait_connected``, the connection listeners) only
once the broker has acknowledged every re-subscription, so a message published by anyone after
that report reaches its handlers. A re-subscription the broker refuses is logged as an error and
listed in :attr:`MqttClient.refused_subscriptions`; the client reports itself connected all the
same.

A process holding hundreds of connections passes ``loop=`` an :class:`MqttLoop` (see
``edgefabric.mqtt_loop``): one thread then serves every client given that loop, instead of a
thread (and a ``select()`` limited to descriptors below 1024) per client. The behaviour above is
the same either way; handlers of all those clients share the loop's thread.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgefabric.errors import TransportError
from edgefabric.mqtt_loop import MqttLoop

__all__ = [
    "BrokerAddress",
    "Message",
    "MessageHandler",
    "MqttClient",
    "MqttLoop",
    "MqttTls",
    "Will",
]

logger = logging.getLogger(__name__)

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_SHARE_PREFIX = "$share/"
_LOOP_CLOSE_WAIT_S = 5.0  # how long close() waits for a shared loop to send the DISCONNECT


@dataclass(frozen=True)
class BrokerAddress:
    """Where a broker listens: ``mqtt://HOST[:PORT]`` or, with TLS, ``mqtts://HOST[:PORT]``."""

    host: str
    port: int
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """Parse a broker URL; ``ValueError`` says what was expected."""
        expected = "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"broker URL {url!r}: unknown scheme {parts.scheme!r}; {expected}")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"broker URL {url!r}: only a host and port are allowed; {expected}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"broker URL {url!r}: the port is not a number in 1-65535") from None
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r}: no host; {expected}")
        if port == 0:
            raise ValueError(f"broker URL {url!r}: port 0 cannot be connected to")
        return cls(parts.hostname, port or _DEFAULT_PORTS[parts.scheme], parts.scheme == "mqtts")

    @property
    def url(self) -> str:
        """The address as a URL, e.g. ``mqtt://127.0.0.1:1883``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class Message:
    """A received PUBLISH with the MQTT 5 properties the project uses."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None
    user_properties: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Will:
    """The Last Will the broker publishes when the client drops without a DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


MessageHandler = Callable[[Message], None]


@dataclass(frozen=True)
class MqttTls:
    """TLS towards an ``mqtts://`` broker, from PEM files: the CA to trust (default: the
    system's) and, for mutual TLS, this client's certificate and key (``edgefabric fleet
    enroll`` writes all three)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError(
                "a client certificate needs its key and a key its certificate: give both "
                f"(got certificate {self.cert_file}, key {self.key_file})"
            )

    def context(self) -> ssl.SSLContext:
        """A client context verifying the broker's certificate and host name; ``ValueError``
        names the file that cannot be used and why."""
        for kind, path in (
            ("CA", self.ca_file),
            ("certificate", self.cert_file),
            ("key", self.key_file),
        ):
            if path is not None and not Path(path).is_file():
                raise ValueError(f"MQTT TLS {kind} file {path} does not exist or is not a file")
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (ssl.SSLError, OSError) as error:
            raise ValueError(
                f"MQTT TLS CA file {self.ca_file} holds no usable PEM certificate: {error}"
            ) from error
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file is not None and self.key_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (ssl.SSLError, OSError) as error:
                raise ValueError(
                    f"cannot use MQTT client certificate {self.cert_file} with key "
                    f"{self.key_file}: {error} (are both PEM, and the key the certificate's?)"
                ) from error
        return context


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass
class _Subscription:
    topic_filter: str
    handler: MessageHandler
    qos: int
    identifier: int

    @property
    def match_filter(self) -> str:
        """The filter without a ``$share/{group}/`` prefix, for matching topics."""
        if self.topic_filter.startswith(_SHARE_PREFIX):
            return self.topic_filter.split("/", 2)[2]
        return self.topic_filter


class _Outcome:
    """One awaited answer from the broker (a SUBACK or a reply), filled in by the loop thread."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.message: Message | None = None
        self.reason_codes: list[ReasonCode] = []
        self.error: TransportError | None = None

    def fail(self, error: TransportError) -> None:
        self.error = error
        self.done.set()


class MqttClient:
    """An MQTT 5 connection with automatic reconnect, re-subscription and request/response."""

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        *,
        will: Will | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        keepalive_s: int = 30,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        tls: MqttTls | None = None,
        reconnect_min_delay_s: int = 1,
        reconnect_max_delay_s: int = 30,
        loop: MqttLoop | None = None,
    ) -> None:
        """``loop``: a running :class:`MqttLoop` to share instead of a network thread of its own.
        ``tls`` (CA, certificate, key files) or a ready ``tls_context``: TLS options for an
        ``mqtts://`` broker."""
        if tls is not None and tls_context is not None:
            raise ValueError("give tls (PEM files) or tls_context, not both")
        if (tls_context is not None or tls is not None) and not address.tls:
            raise ValueError(f"TLS options were given for {address}; use an mqtts:// URL")
        if tls is not None:
            tls_context = tls.context()
        self.address = address
        self.client_id = client_id
        self._clean_start = clean_start
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._lock = threading.RLock()
        self._state = _State.NEW
        self._connected = threading.Event()  # reported: CONNACK and every re-subscription SUBACK
        self._session_up = False  # CONNACK received; subscriptions may be sent
        self._resubscribing: dict[int, str] = {}  # SUBSCRIBE message id -> filter, after CONNACK
        self._refused: dict[str, str] = {}  # filter -> the broker's reason, last (re)connection
        self._connack = threading.Event()
        self._connack_error: str | None = None
        self._loop_thread: int | None = None
        self._max_packet_size: int | None = None
        self._subscription_ids_available = True
        self._subscriptions: dict[str, _Subscription] = {}
        self._next_subscription_id = 1
        self._subacks: dict[int, _Outcome] = {}
        self._reply_topics: set[str] = set()
        self._pending: dict[bytes, _Outcome] = {}
        self._listeners: list[Callable[[bool], None]] = []
        self._io_loop = loop
        self._reconnect_delays = (float(reconnect_min_delay_s), float(reconnect_max_delay_s))
        self._socket_gone = threading.Event()  # no socket open (shared loop only)
        self._socket_gone.set()

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        client.reconnect_delay_set(reconnect_min_delay_s, reconnect_max_delay_s)
        if will is not None:
            client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        if username is not None:
            client.username_pw_set(username, password)
        if address.tls:
            client.tls_set_context(tls_context or ssl.create_default_context())
        self._paho = client
        self._set_callbacks(client, shared_loop=loop is not None)

    def _set_callbacks(self, client: paho.Client, *, shared_loop: bool) -> None:
        client.on_log = _log_paho
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        if shared_loop:
            client.on_socket_open = self._socket_opened
            client.on_socket_close = self._socket_closed
            client.on_socket_register_write = self._socket_wants_write

    # -- lifecycle -------------------------------------------------------------------------

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect and wait for the broker's CONNACK; reconnects by itself from then on.

        On failure the client is left as it was, so ``connect()`` may be called again.
        """
        with self._lock:
            if self._state is not _State.NEW:
                raise RuntimeError(f"MQTT client {self.client_id!r} is {self._state.value}")
            self._state = _State.RUNNING
        if self._io_loop is not None:
            if not self._io_loop.running:
                with self._lock:
                    self._state = _State.NEW
                raise RuntimeError(f"start MQTT loop {self._io_loop.name!r} before connecting")
            self._loop_thread = self._io_loop.thread_ident
            self._io_loop._attach(self)
        deadline = time.monotonic() + timeout_s
        properties = _properties(PacketTypes.CONNECT)
        if self._session_expiry_s:
            properties.SessionExpiryInterval = self._session_expiry_s
        self._paho.connect_timeout = timeout_s
        try:
            rc = self._paho.connect(
                self.address.host,
                self.address.port,
                keepalive=self._keepalive_s,
                clean_start=self._clean_start,
                properties=properties,
            )
        except (OSError, ValueError) as error:
            raise self._connect_failed(
                f"cannot connect to MQTT broker {self.address}: {error}"
            ) from error
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise self._connect_failed(
                f"cannot connect to MQTT broker {self.address}: {paho.error_string(rc)}"
            )
        if self._io_loop is None:
            self._paho.loop_start()
        if not self._connack.wait(max(0.0, deadline - time.monotonic())):
            raise self._connect_failed(
                f"MQTT broker {self.address} did not answer CONNECT within {timeout_s:g} s"
            )
        if self._connack_error is not None:
            raise self._connect_failed(
                f"MQTT broker {self.address} refused client {self.client_id!r}: "
                f"{self._connack_error}"
            )

    def close(self) -> None:
        """Disconnect cleanly (the broker discards the Will) and stop the network thread."""
        with self._lock:
            if self._state is _State.CLOSED:
                return
            was_running = self._state is _State.RUNNING
            self._state = _State.CLOSED
        if was_running:
            self._abandon()
        with self._lock:
            self._session_up = False
            self._resubscribing.clear()
        self._fail_pending(f"MQTT client {self.client_id!r} was closed")

    def __enter__(self) -> MqttClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """Whether the client holds an acknowledged connection right now, with every
        re-subscription acknowledged by the broker after a reconnect."""
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a (re)connection with its re-subscriptions
        acknowledged; whether the client is connected."""
        return self._connected.wait(timeout_s)

    @property
    def refused_subscriptions(self) -> dict[str, str]:
        """Filters the broker refused to subscribe again after the last reconnect, with its
        reason (a copy; empty when every re-subscription was granted)."""
        with self._lock:
            return dict(self._refused)

    @property
    def max_packet_size(self) -> int | None:
        """The broker's Maximum Packet Size from its last CONNACK, if it announced one."""
        return self._max_packet_size

    def on_connection_change(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(connected)`` on the network thread whenever the connection goes up
        or down."""
        with self._lock:
            self._listeners.append(callback)

    # -- subscribing -----------------------------------------------------------------------

    def subscribe(
        self,
        topic_filter: str,
        handler: MessageHandler,
        qos: int = 1,
        *,
        timeout_s: float = 10.0,
    ) -> None:
        """Deliver messages matching ``topic_filter`` (``$share/{group}/...`` allowed) to
        ``handler``, now and after every reconnect; waits for the broker's SUBACK."""
        if qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, got {qos}")
        with self._lock:
            self._require_running()
            existing = self._subscriptions.get(topic_filter)
            identifier = existing.identifier if existing else self._next_subscription_id
            if existing is None:
                self._next_subscription_id += 1
            subscription = _Subscription(topic_filter, handler, qos, identifier)
            self._subscriptions[topic_filter] = subscription
            if not self._session_up:
                return  # sent by _on_connect
            outcome = self._send_subscribe(subscription)
        if outcome is None or self._on_loop_thread():
            return
        try:
            self._await_suback(outcome, topic_filter, timeout_s)
        except TransportError:
            with self._lock:  # failed subscriptions are forgotten, not retried on reconnect
                if self._subscriptions.get(topic_filter) is subscription:
                    del self._subscriptions[topic_filter]
            raise

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop delivering ``topic_filter``; does not wait for the broker's UNSUBACK."""
        with self._lock:
            if self._subscriptions.pop(topic_filter, None) is None or not self._session_up:
                return
        rc, _ = self._paho.unsubscribe(topic_filter)
        if rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise TransportError(
                f"cannot unsubscribe from {topic_filter!r} on {self.address}: "
                f"{paho.error_string(rc)}"
            )

    # -- publishing ------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
        user_properties: Iterable[tuple[str, str]] = (),
        wait: bool = False,
        timeout_s: float = 10.0,
    ) -> None:
        """Publish ``payload``. With ``wait``, block until the broker acknowledged it (QoS 1/2)
        or it was written (QoS 0). Without ``wait``, a QoS 1/2 message published while
        disconnected is queued and sent after the reconnect."""
        self._require_running()
        if wait and self._on_loop_thread():
            raise TransportError(
                f"publish(wait=True) to {topic!r} cannot wait on the MQTT network thread"
            )
        properties = _publish_properties(response_topic, correlation_data, user_properties)
        try:
            info = self._paho.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except ValueError as error:
            raise ValueError(f"cannot publish to {topic!r}: {error}") from error
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0 and not wait:
            logger.debug("not connected to %s; queued message for %s", self.address, topic)
            return
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError(
                f"cannot publish to {topic!r} on {self.address}: {paho.error_string(info.rc)}"
            )
        if not wait:
            return
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as error:
            message = f"publishing to {topic!r} on {self.address} failed: {error}"
            raise TransportError(message) from error
        if not info.is_published():
            raise TransportError(
                f"MQTT broker {self.address} did not acknowledge the message to {topic!r} "
                f"within {timeout_s:g} s"
            )

    def request(
        self,
        topic: str,
        payload: bytes,
        *,
        response_topic: str,
        timeout_s: float,
        qos: int = 1,
    ) -> Message:
        """MQTT 5 request/response: publish with fresh correlation data and wait for the reply
        carrying it on ``response_topic`` (subscribed once, shared by concurrent requests)."""
        if self._on_loop_thread():
            raise TransportError(f"request to {topic!r} cannot wait on the MQTT network thread")
        deadline = time.monotonic() + timeout_s
        self._ensure_reply_subscription(response_topic, timeout_s)
        correlation = os.urandom(16)
        outcome = _Outcome()
        with self._lock:
            self._pending[correlation] = outcome
        try:
            if not self.connected:
                raise TransportError(
                    f"not connected to MQTT broker {self.address}; request to {topic!r} not sent"
                )
            self.publish(
                topic, payload, qos=qos, response_topic=response_topic, correlation_data=correlation
            )
            if not outcome.done.wait(max(0.0, deadline - time.monotonic())):
                raise TransportError(
                    f"no reply on {response_topic!r} within {timeout_s:g} s to the request "
                    f"published to {topic!r} (broker {self.address})"
                )
        finally:
            with self._lock:
                self._pending.pop(correlation, None)
        if outcome.error is not None:
            raise outcome.error
        if outcome.message is None:  # pragma: no cover - done is set with a message or an error
            raise TransportError(f"request to {topic!r} ended without a reply")
        return outcome.message

    # -- internals (callbacks run on paho's network thread) ----------------------------------

    def _require_running(self) -> None:
        if self._state is not _State.RUNNING:
            verb = "call connect() first" if self._state is _State.NEW else "it was closed"
            raise RuntimeError(f"MQTT client {self.client_id!r} is not running: {verb}")

    def _on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _abandon(self) -> None:
        if self._io_loop is None:
            self._paho.disconnect()  # without a socket: only marks paho disconnected, quietly
            self._paho.loop_stop()
        else:
            self._io_loop._detach(self)  # before the socket closes: no reconnect
            sent = self._paho.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS
            if sent and not self._on_loop_thread() and self._io_loop.running:
                self._socket_gone.wait(_LOOP_CLOSE_WAIT_S)
        self._connected.clear()

    def _connect_failed(self, message: str) -> TransportError:
        """Stop what connect() started so that it may be called again."""
        self._abandon()
        with self._lock:
            self._state = _State.NEW
        self._connack.clear()
        self._connack_error = None
        return TransportError(message)

    def _ensure_reply_subscription(self, response_topic: str, timeout_s: float) -> None:
        with self._lock:
            if response_topic in self._reply_topics:
                return
        self.subscribe(response_topic, self._route_reply, qos=1, timeout_s=timeout_s)
        with self._lock:
            self._reply_topics.add(response_topic)

    def _route_reply(self, message: Message) -> None:
        with self._lock:
            outcome = self._pending.get(message.correlation_data or b"")
        if outcome is None:
            logger.debug("dropping a late or unknown reply on %s", message.topic)
            return
        outcome.message = message
        outcome.done.set()

    def _send_subscribe(self, subscription: _Subscription) -> _Outcome | None:
        """Send one SUBSCRIBE (holding ``_lock``, so the SUBACK cannot overtake its record)."""
        mid = self._send_subscribe_packet(subscription)
        if mid is None:
            return None
        outcome = _Outcome()
        self._subacks[mid] = outcome
        return outcome

    def _send_subscribe_packet(self, subscription: _Subscription) -> int | None:
        """Send one SUBSCRIBE; its message id, or ``None`` (logged) when paho cannot."""
        properties = None
        if self._subscription_ids_available:
            properties = _properties(PacketTypes.SUBSCRIBE)
            properties.SubscriptionIdentifier = subscription.identifier
        rc, mid = self._paho.subscribe(
            subscription.topic_filter,
            options=SubscribeOptions(qos=subscription.qos),
            properties=properties,
        )
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            logger.warning(
                "cannot subscribe to %s on %s: %s",
                subscription.topic_filter,
                self.address,
                paho.error_string(rc),
            )
            return None
        return int(mid)

    def _await_suback(self, outcome: _Outcome, topic_filter: str, timeout_s: float) -> None:
        try:
            if not outcome.done.wait(timeout_s):
                raise TransportError(
                    f"MQTT broker {self.address} did not acknowledge the subscription to "
                    f"{topic_filter!r} within {timeout_s:g} s"
                )
        finally:
            with self._lock:
                for mid, candidate in list(self._subacks.items()):
                    if candidate is outcome:
                        del self._subacks[mid]
        if outcome.error is not None:
            raise outcome.error
        refused = [code for code in outcome.reason_codes if code.is_failure]
        if refused:
            raise TransportError(
                f"MQTT broker {self.address} refused the subscription to {topic_filter!r}: "
                f"{refused[0]}"
            )

    def _on_connect(
        self,
        _client: paho.Client,
        _userdata: Any,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._loop_thread = threading.get_ident()
        if reason_code.is_failure:
            logger.error("MQTT broker %s refused %s: %s", self.address, self.client_id, reason_code)
            self._connack_error = str(reason_code)
            self._connack.set()
            return
        _disable_nagle(self._paho.socket())
        self._max_packet_size = getattr(properties, "MaximumPacketSize", None)
        self._subscription_ids_available = bool(
            getattr(properties, "SubscriptionIdentifierAvailable", 1)
        )
        with self._lock:
            self._session_up = True
            self._resubscribing.clear()
            self._refused.clear()
            for subscription in self._subscriptions.values():
                mid = self._send_subscribe_packet(subscription)
                if mid is not None:  # reported connected once all are acknowledged (_on_subscribe)
                    self._resubscribing[mid] = subscription.topic_filter
            ready = not self._resubscribing
            if ready:
                self._connected.set()
            listeners = list(self._listeners)
        logger.info(
            "connected to %s as %s (session present: %s; %d subscription(s) to restore)",
            self.address,
            self.client_id,
            flags.session_present,
            len(self._resubscribing),
        )
        self._connack.set()
        if ready:
            self._notify(listeners, connected=True)

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._lock:
            was_up = self._session_up
            reported = self._connected.is_set()
            self._session_up = False
            self._resubscribing.clear()
            self._connected.clear()
            listeners = list(self._listeners)
            closing = self._state is _State.CLOSED
            if not was_up and not self._connack.is_set():
                # Dropped before any CONNACK: connect() fails now rather than at its timeout.
                # With TLS 1.3 this is how a refused client certificate shows.
                self._connack_error = (
                    f"the connection closed before the broker answered ({reason_code}); a TLS "
                    "broker does this to a client certificate that is missing, revoked, "
                    "expired or from another CA (the broker's log says which)"
                )
                self._connack.set()
        if not was_up:
            return
        if not closing:
            logger.warning("lost connection to %s (%s); reconnecting", self.address, reason_code)
        self._fail_pending(f"connection to MQTT broker {self.address} lost ({reason_code})")
        if reported:  # listeners never heard of a connection dropped while re-subscribing
            self._notify(listeners, connected=False)

    def _on_subscribe(
        self,
        _client: paho.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = next((code for code in reason_codes if code.is_failure), None)
        listeners: list[Callable[[bool], None]] = []
        with self._lock:
            outcome = self._subacks.pop(mid, None)
            topic_filter = self._resubscribing.pop(mid, None)
            if topic_filter is not None:
                if refused is not None:
                    self._refused[topic_filter] = str(refused)
                if not self._resubscribing and self._session_up and not self._connected.is_set():
                    self._connected.set()
                    listeners = list(self._listeners)
        if outcome is not None:
            outcome.reason_codes = reason_codes
            outcome.done.set()
        if refused is not None and topic_filter is not None:
            logger.error(
                "MQTT broker %s refused to restore the subscription to %r after reconnecting "
                "(%s): its messages will not arrive; check the broker's ACL for %s",
                self.address,
                topic_filter,
                refused,
                self.client_id,
            )
        elif refused is not None:
            logger.error("MQTT broker %s refused a subscription: %s", self.address, refused)
        if listeners:
            logger.info("subscriptions on %s restored; reporting connected", self.address)
            self._notify(listeners, connected=True)

    def _on_message(self, _client: paho.Client, _userdata: Any, raw: paho.MQTTMessage) -> None:
        try:
            message = _message_from(raw)
        except ValueError:  # a topic that is not UTF-8
            logger.warning("dropping a message with an undecodable topic from %s", self.address)
            return
        identifiers = _subscription_identifiers(raw)
        with self._lock:
            subscriptions = [
                subscription
                for subscription in self._subscriptions.values()
                if (
                    subscription.identifier in identifiers
                    if identifiers
                    else paho.topic_matches_sub(subscription.match_filter, message.topic)
                )
            ]
        for subscription in subscriptions:
            try:
                subscription.handler(message)
            except Exception:
                logger.exception(
                    "handler for %s failed on a message to %s",
                    subscription.topic_filter,
                    message.topic,
                )

    # -- a shared MqttLoop (edgefabric.mqtt_loop): its hooks, called on its thread -----------

    def _socket_opened(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        self._socket_gone.clear()
        if self._io_loop is not None and isinstance(sock, socket.socket):
            self._io_loop._opened(self, sock)

    def _socket_closed(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        if self._io_loop is not None and isinstance(sock, socket.socket):
            self._io_loop._closed(self, sock)
        self._socket_gone.set()

    def _socket_wants_write(self, _client: paho.Client, _userdata: Any, _sock: Any) -> None:
        if self._io_loop is not None:
            self._io_loop._wants_write(self)

    def _io_socket(self) -> socket.socket | None:
        sock = self._paho.socket()
        return sock if isinstance(sock, socket.socket) else None

    def _io_read(self) -> None:
        self._paho.loop_read()
        sock = self._paho.socket()
        while isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted, unseen by epoll
            self._paho.loop_read()
            sock = self._paho.socket()

    def _io_write(self) -> bool:
        self._paho.loop_write()
        return self._paho.want_write()

    def _io_misc(self) -> None:
        self._paho.loop_misc()

    def _io_reconnect(self) -> None:
        self._paho.reconnect()

    def _io_reconnect_delays(self) -> tuple[float, float]:
        return self._reconnect_delays

    def _fail_pending(self, reason: str) -> None:
        with self._lock:
            waiting = list(self._pending.values()) + list(self._subacks.values())
            self._subacks.clear()
        for outcome in waiting:
            outcome.fail(TransportError(reason))

    @staticmethod
    def _notify(listeners: list[Callable[[bool], None]], *, connected: bool) -> None:
        for listener in listeners:
            try:
                listener(connected)
            except Exception:
                logger.exception("connection listener failed")


_paho_logger = logging.getLogger(f"{__name__}.paho")


def _log_paho(_client: paho.Client, _userdata: Any, level: int, text: str) -> None:
    """paho's log, at its levels, except the error its network thread logs for a missing socket
    while it waits to reconnect or stops after close(): expected there, so debug."""
    std_level = paho.LOGGING_LEVEL.get(level, logging.DEBUG)  # type: ignore[call-overload]
    if text.startswith("Client is not connected"):
        std_level = logging.DEBUG
    _paho_logger.log(std_level, "%s", text)


def _disable_nagle(sock: object) -> None:
    """Send small packets (acks, requests) at once instead of waiting for delayed ACKs."""
    if isinstance(sock, socket.socket):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as error:
            logger.debug("cannot set TCP_NODELAY: %s", error)


def _properties(packet_type: int) -> Properties:
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho leaves it untyped


def _publish_properties(
    response_topic: str | None,
    correlation_data: bytes | None,
    user_properties: Iterable[tuple[str, str]],
) -> Properties | None:
    pairs = list(user_properties)
    if response_topic is None and correlation_data is None and not pairs:
        return None
    properties = _properties(PacketTypes.PUBLISH)
    if response_topic is not None:
        properties.ResponseTopic = response_topic
    if correlation_data is not None:
        properties.CorrelationData = correlation_data
    if pairs:
        properties.UserProperty = pairs
    return properties


def _message_from(raw: paho.MQTTMessage) -> Message:
    properties = getattr(raw, "properties", None)
    user_properties = getattr(properties, "UserProperty", [])
    return Message(
        topic=raw.topic,
        payload=bytes(raw.payload),
        qos=raw.qos,
        retain=bool(raw.retain),
        response_topic=getattr(properties, "ResponseTopic", None),
        correlation_data=getattr(properties, "CorrelationData", None),
        user_properties=tuple((str(key), str(value)) for key, value in user_properties),
    )


def _subscription_identifiers(raw: paho.MQTTMessage) -> frozenset[int]:
    value = getattr(getattr(raw, "properties", None), "SubscriptionIdentifier", None)
    if value is None:
        return frozenset()
    return frozenset(value) if isinstance(value, list) else frozenset((int(value),))
