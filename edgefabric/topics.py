"""The fleet's MQTT topic tree, in one place (see DESIGN.md, "Fleet messaging over MQTT").

    ef/v1/dev/{device}/status    retained birth/Last Will ("online"/"offline")
    ef/v1/dev/{device}/health    periodic health reports
    ef/v1/dev/{device}/desired   retained, signed desired state (rollout controller only)
    ef/v1/dev/{device}/events    reconcile progress and failures
    ef/v1/dev/{device}/infer     KServe v2 requests relayed to the device (MQTT 5 request/response)
    ef/v1/relay/resp/{client}/{device}
                                 their answers, to the relaying client (a gateway's edge pool),
                                 one topic per answering device (ACL: a device writes its own)
    ef/v1/repo/req/{client}      TUF repository requests (MQTT 5 response topic + correlation)
    ef/v1/repo/resp/{client}     their answers
    ef/v1/gw/{gateway}/stats     a gateway's routing statistics per model and pool, every
                                 report interval (QoS 0, not retained; ACL: its own name only)
    ef/v1/routes                 retained, signed route table for the gateways (controller only)

``{device}`` and ``{client}`` are one topic level each. A device's id is its MQTT client id and
its certificate's CN, so broker ACLs match it with ``%u`` (docs/adr/0015); a relaying gateway's
``{client}`` is its certificate's CN when it has one (the name its ACL entry grants), else its
client id; so is a gateway's ``{gateway}`` in its statistics topic.
"""

from __future__ import annotations

__all__ = [
    "ALL_DEVICE_EVENTS",
    "ALL_DEVICE_HEALTH",
    "ALL_DEVICE_STATUS",
    "ALL_GATEWAY_STATS",
    "ALL_ROLLOUTS",
    "PREFIX",
    "REPO_REQUEST_FILTER",
    "ROUTES",
    "device_desired",
    "device_events",
    "device_health",
    "device_infer",
    "device_status",
    "gateway_stats",
    "parse_device_topic",
    "parse_gateway_stats",
    "parse_relay_response",
    "relay_response",
    "relay_responses",
    "repo_request",
    "repo_request_client",
    "repo_response",
    "rollout_status",
    "shared",
]

PREFIX = "ef/v1"
_REPO_REQUEST = f"{PREFIX}/repo/req/"
_REPO_RESPONSE = f"{PREFIX}/repo/resp/"
_RELAY_RESPONSE = f"{PREFIX}/relay/resp/"
_DEVICE = f"{PREFIX}/dev/"
_GATEWAY = f"{PREFIX}/gw/"
_STATS = "/stats"
REPO_REQUEST_FILTER = f"{_REPO_REQUEST}+"
ALL_DEVICE_STATUS = f"{PREFIX}/dev/+/status"
ALL_DEVICE_HEALTH = f"{PREFIX}/dev/+/health"
ALL_DEVICE_EVENTS = f"{PREFIX}/dev/+/events"
ALL_GATEWAY_STATS = f"{_GATEWAY}+{_STATS}"
ALL_ROLLOUTS = f"{PREFIX}/rollouts/+"
"""What the distribution server subscribes to: every client's repository requests."""
ROUTES = f"{PREFIX}/routes"
"""The store's signed route table (``SignedRouteTable``, retained; docs/adr/0017)."""

_FORBIDDEN = frozenset("/+#\x00")


def _level(kind: str, value: str) -> str:
    """``value`` checked to be exactly one safe topic level."""
    if not value or _FORBIDDEN.intersection(value) or value.startswith("$"):
        raise ValueError(
            f"{kind} {value!r} cannot be an MQTT topic level: it must be non-empty and contain "
            "no '/', '+', '#' or NUL, nor start with '$'"
        )
    return value


def device_status(device: str) -> str:
    """Retained birth message; the device's Last Will overwrites it when it drops."""
    return f"{PREFIX}/dev/{_level('device id', device)}/status"


def device_health(device: str) -> str:
    """Periodic health reports."""
    return f"{PREFIX}/dev/{_level('device id', device)}/health"


def device_desired(device: str) -> str:
    """Retained signed desired state, written by the rollout controller only."""
    return f"{PREFIX}/dev/{_level('device id', device)}/desired"


def device_events(device: str) -> str:
    """Reconcile progress and failures."""
    return f"{PREFIX}/dev/{_level('device id', device)}/events"


def device_infer(device: str) -> str:
    """Inference requests relayed to a device that accepts no inbound connections."""
    return f"{PREFIX}/dev/{_level('device id', device)}/infer"


def relay_response(client_id: str, device: str) -> str:
    """Where ``device`` answers the inference requests ``client_id`` relays to it."""
    return f"{_RELAY_RESPONSE}{_level('client id', client_id)}/{_level('device id', device)}"


def relay_responses(client_id: str) -> str:
    """The filter matching every device's answers to ``client_id``."""
    return f"{_RELAY_RESPONSE}{_level('client id', client_id)}/+"


def parse_relay_response(topic: str) -> tuple[str, str] | None:
    """``(client id, device)`` of a relay response topic, or None if ``topic`` is not one."""
    if not topic.startswith(_RELAY_RESPONSE):
        return None
    client_id, sep, device = topic[len(_RELAY_RESPONSE) :].partition("/")
    if not sep:
        return None
    try:
        return _level("client id", client_id), _level("device id", device)
    except ValueError:
        return None


def parse_device_topic(topic: str) -> tuple[str, str] | None:
    """``(device, kind)`` of an ``ef/v1/dev/{device}/{kind}`` topic, or None if it is not one."""
    if not topic.startswith(_DEVICE):
        return None
    device, sep, kind = topic[len(_DEVICE) :].partition("/")
    if not sep or not kind or "/" in kind:
        return None
    try:
        return _level("device id", device), kind
    except ValueError:
        return None


def gateway_stats(gateway: str) -> str:
    """A gateway's periodic routing statistics (``GatewayStats``, QoS 0, not retained)."""
    return f"{_GATEWAY}{_level('gateway id', gateway)}{_STATS}"


def parse_gateway_stats(topic: str) -> str | None:
    """The gateway id of an ``ef/v1/gw/{gateway}/stats`` topic, or None if it is not one."""
    if not topic.startswith(_GATEWAY) or not topic.endswith(_STATS):
        return None
    try:
        return _level("gateway id", topic[len(_GATEWAY) : -len(_STATS)])
    except ValueError:
        return None


def rollout_status(rollout_id: str) -> str:
    """Retained progress of a rollout (JSON), written by the controller."""
    return f"{PREFIX}/rollouts/{_level('rollout id', rollout_id)}"


def repo_request(client_id: str) -> str:
    """Where ``client_id`` publishes its repository requests."""
    return _REPO_REQUEST + _level("client id", client_id)


def repo_response(client_id: str) -> str:
    """Where ``client_id`` receives the answers to its repository requests."""
    return _REPO_RESPONSE + _level("client id", client_id)


def repo_request_client(topic: str) -> str | None:
    """The client id in a repository request topic, or None if ``topic`` is not one."""
    if not topic.startswith(_REPO_REQUEST):
        return None
    try:
        return _level("client id", topic[len(_REPO_REQUEST) :])
    except ValueError:
        return None


def shared(group: str, topic_filter: str) -> str:
    """A shared subscription: the broker hands each message to one member of ``group``."""
    return f"$share/{_level('share group', group)}/{topic_filter}"
