"""A gateway's routing statistics: the per-interval accumulator, the report it publishes, the
settings that choose where, and the topic. Pure logic; the MQTT client is a recording fake."""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from edgefabric import topics
from edgefabric.errors import TransportError
from edgefabric.mqtt import BrokerAddress, MqttClient, MqttTls
from edgefabric.wire.v1.gateway_pb2 import GatewayStats
from gateway.reporting import StatsReporter, build_reporter, stats_message
from gateway.route_stats import PoolInterval, RouteStats, percentile
from gateway.settings import GatewaySettings
from tests.tls_certs import ThrowawayCA

pytestmark = pytest.mark.unit

BROKER = BrokerAddress.parse("mqtt://127.0.0.1:1883")


# -- the accumulator ---------------------------------------------------------------------------


def test_counts_and_percentiles_per_model_and_pool_over_one_interval() -> None:
    stats = RouteStats()
    for ms in range(1, 101):  # 1..100 ms, in a shuffled order
        stats.record("mlp", "local", ((ms * 37) % 100 + 1) / 1000, True)
    stats.record("mlp", "local", 9.0, False)  # a failure: counted, not a latency sample
    stats.record("mlp", "triton", 0.004, True)
    stats.record("add", "local", 0.001, False)
    intervals = stats.drain()
    assert [(i.model, i.pool) for i in intervals] == [
        ("add", "local"),
        ("mlp", "local"),
        ("mlp", "triton"),
    ]
    add, local, triton = intervals
    assert (add.requests, add.errors, add.p50_ms, add.p99_ms) == (1, 1, None, None)
    assert (local.requests, local.errors) == (101, 1)
    assert local.p50_ms == pytest.approx(50.0)
    assert local.p99_ms == pytest.approx(99.0)
    assert (triton.requests, triton.p50_ms, triton.p99_ms) == (1, 4.0, 4.0)


def test_a_drain_starts_the_next_interval_afresh() -> None:
    stats = RouteStats()
    stats.record("mlp", "local", 0.002, True)
    assert len(stats.drain()) == 1
    assert stats.drain() == ()
    stats.record("mlp", "local", 0.003, True)
    (interval,) = stats.drain()
    assert (interval.requests, interval.p50_ms) == (1, 3.0)


def test_the_reservoir_stays_bounded_and_samples_the_whole_interval() -> None:
    stats = RouteStats(max_samples=64, rng=random.Random(7))  # noqa: S311
    for i in range(10_000):  # the first half fast, the second half slow
        stats.record("mlp", "local", 0.001 if i < 5000 else 0.100, True)
    assert len(stats._series["mlp", "local"].samples) == 64
    (interval,) = stats.drain()
    assert interval.requests == 10_000
    assert interval.p99_ms == pytest.approx(100.0)  # the slow half is in the sample
    assert interval.p50_ms in (pytest.approx(1.0), pytest.approx(100.0))


def test_times_that_are_not_finite_seconds_are_no_samples() -> None:
    stats = RouteStats()
    for bad in (float("nan"), float("inf"), -1.0):
        stats.record("mlp", "local", bad, True)
    (interval,) = stats.drain()
    assert (interval.requests, interval.errors, interval.p50_ms) == (3, 0, None)


def test_series_beyond_the_limit_are_counted_as_overflow() -> None:
    stats = RouteStats(max_series=2)
    for model in ("a", "b", "c", "c"):
        stats.record(model, "local", 0.001, True)
    stats.record("a", "local", 0.001, True)  # a series already kept goes on counting
    assert [(i.model, i.requests) for i in stats.drain()] == [("a", 2), ("b", 1)]
    assert stats.overflow == 2


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"max_samples": 0}, "max_samples must be 1 or more, got 0"),
        ({"max_series": 0}, "max_series must be 1 or more, got 0"),
    ],
)
def test_bad_limits_are_refused(values: dict[str, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RouteStats(**values)  # type: ignore[arg-type]


def test_nearest_rank_percentile() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.99) == 4.0
    assert percentile([7.0], 0.01) == 7.0
    with pytest.raises(ValueError, match="percentile of no values"):
        percentile([], 0.5)


# -- the report --------------------------------------------------------------------------------


class RecordingClient:
    """Stands in for MqttClient: keeps what was published; may refuse like a lost broker."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, Any]]] = []
        self.down = False

    def publish(self, topic: str, payload: bytes, **options: Any) -> None:
        if self.down:
            raise TransportError("cannot publish: the client is not connected")
        self.published.append((topic, payload, options))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reporter(stats: RouteStats, clock: Clock) -> tuple[StatsReporter, RecordingClient]:
    client = RecordingClient()

    def factory(address: BrokerAddress, client_id: str, tls: MqttTls | None) -> MqttClient:
        assert client_id.startswith("gw-stats-gw-1-")
        return client  # type: ignore[return-value]

    made = StatsReporter(stats, BROKER, "gw-1", interval_s=10, client_factory=factory, clock=clock)
    made._client = client  # type: ignore[assignment]  # what start() does, without a loop
    made._connected = True
    return made, client


def test_a_report_is_one_interval_on_the_gateways_topic_at_qos_0_not_retained() -> None:
    clock = Clock(1000.0)
    stats = RouteStats()
    made, client = reporter(stats, clock)
    stats.record("mlp", "local", 0.002, True)
    stats.record("mlp", "edge", 0.010, False)
    clock.now = 1010.5
    message = made.report()
    assert message is not None
    ((topic, payload, options),) = client.published
    assert topic == "ef/v1/gw/gw-1/stats" == topics.gateway_stats("gw-1")
    assert options == {"qos": 0, "wait": False}
    decoded = GatewayStats.FromString(payload)
    assert decoded == message
    assert (decoded.gateway_id, decoded.sequence, decoded.at_ms) == ("gw-1", 1, 1_010_500)
    assert decoded.interval_s == pytest.approx(10.5)
    by_pool = {p.pool: p for p in decoded.pools}
    assert (by_pool["local"].requests, by_pool["local"].p50_ms) == (1, 2.0)
    assert (by_pool["edge"].errors, by_pool["edge"].p99_ms) == (1, 0.0)  # 0: none succeeded


def test_quiet_intervals_publish_nothing_and_lost_ones_are_counted() -> None:
    clock = Clock(0.0)
    stats = RouteStats()
    made, client = reporter(stats, clock)
    assert made.report() is None
    made._connected = False  # not connected yet: dropped without trying
    stats.record("mlp", "local", 0.002, True)
    assert made.report() is not None
    assert (made.dropped, client.published) == (1, [])
    made._connected = True
    client.down = True
    stats.record("mlp", "local", 0.002, True)
    assert made.report() is not None
    assert (made.dropped, made.published, client.published) == (2, 0, [])
    client.down = False
    stats.record("mlp", "local", 0.002, True)
    made.report()
    assert GatewayStats.FromString(client.published[0][1]).sequence == 3  # the gap shows


def test_local_requests_are_counted_once_whichever_path_they_took() -> None:
    stats = RouteStats()
    made, _ = reporter(stats, Clock(0.0))
    seen: list[str] = []
    observe = made.route_observer(lambda model, version, pool, code, s: seen.append(pool))
    observe("mlp", "", "local", "OK", 0.001)  # the router's view of a local attempt ...
    made.observe_local("mlp", 1, 0.001, "OK")  # ... and the data plane's: one request
    observe("mlp", "", "triton", "UNAVAILABLE", 0.2)
    made.observe_local("mlp", 1, 0.001, "INVALID_ARGUMENT")
    assert seen == ["local", "triton"]  # the metrics still see every attempt
    assert [(i.pool, i.requests, i.errors) for i in stats.drain()] == [
        ("local", 2, 1),
        ("triton", 1, 1),
    ]


def test_stats_message_writes_no_latency_as_zero() -> None:
    message = stats_message("gw", 3, 5, 1.0, [PoolInterval("m", "p", 2, 2, None, None)])
    (pool,) = message.pools
    assert (pool.requests, pool.errors, pool.p50_ms, pool.p99_ms) == (2, 2, 0.0, 0.0)


def test_a_bad_reporter_is_refused() -> None:
    with pytest.raises(ValueError, match="interval_s must be positive, got 0"):
        StatsReporter(RouteStats(), BROKER, "gw", interval_s=0)
    with pytest.raises(ValueError, match="gateway id 'a/b' cannot be an MQTT topic level"):
        StatsReporter(RouteStats(), BROKER, "a/b")


# -- settings ----------------------------------------------------------------------------------


def gateway(tmp_path: Path, *pools: str, **values: object) -> GatewaySettings:
    base: dict[str, object] = {"model_repository": tmp_path, "pools": pools}
    return GatewaySettings(**{**base, **values})  # type: ignore[arg-type]


def test_reports_go_to_the_report_broker_else_the_first_edge_pools_else_nowhere(
    tmp_path: Path,
) -> None:
    assert gateway(tmp_path).report_target() is None
    assert build_reporter(gateway(tmp_path)) is None
    assert gateway(tmp_path, "t=grpc://h:1").report_target() is None
    pools = ("t=grpc://h:1", "e1=mqtt://a:1883", "e2=mqtt://b:1883")
    assert gateway(tmp_path, *pools).report_target() == "mqtt://a:1883"
    chosen = gateway(tmp_path, *pools, report_broker="mqtt://c:1")
    assert chosen.report_target() == "mqtt://c:1"
    assert gateway(tmp_path, *pools, report_interval_s=0).report_target() is None
    made = build_reporter(gateway(tmp_path, report_broker="mqtt://c:1", report_interval_s=0.5))
    assert made is not None
    assert (made.address.url, made.interval_s) == ("mqtt://c:1", 0.5)
    assert made.gateway_id == (socket.gethostname() or "gateway")
    named = gateway(tmp_path, report_broker="mqtt://c:1", gateway_id="gw-7")
    assert named.report_gateway_id() == "gw-7"


def test_bad_reporting_settings_say_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"unknown scheme .http.; expected mqtt://HOST"):
        gateway(tmp_path, report_broker="http://c:1")
    with pytest.raises(ValidationError, match="gateway id 'a/b' cannot be an MQTT topic level"):
        gateway(tmp_path, report_broker="mqtt://c:1", gateway_id="a/b")
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        gateway(tmp_path, report_interval_s=-1)


def test_over_tls_the_gateway_reports_under_its_certificates_name(tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path / "pki")
    issued = ca.issue("gw-tls", server=False)
    tls = {"mqtt_ca": ca.cert, "mqtt_cert": issued.cert, "mqtt_key": issued.key}
    only_reporting = gateway(tmp_path, report_broker="mqtts://127.0.0.1:8883", **tls)
    assert only_reporting.report_gateway_id() == "gw-tls"  # TLS files need no mqtts:// pool
    assert gateway(tmp_path, "e=mqtts://127.0.0.1:8883", **tls).report_gateway_id() == "gw-tls"
    with pytest.raises(ValidationError, match=r"gateway_id 'other' differs from the CN 'gw-tls'"):
        gateway(tmp_path, "e=mqtts://127.0.0.1:8883", gateway_id="other", **tls)
    with pytest.raises(ValidationError, match=r"and there is neither .*--report-broker mqtts://"):
        gateway(tmp_path, report_broker="mqtt://127.0.0.1:1883", **tls)


# -- the topic ---------------------------------------------------------------------------------


def test_the_gateway_stats_topic() -> None:
    assert topics.ALL_GATEWAY_STATS == "ef/v1/gw/+/stats"
    assert topics.parse_gateway_stats("ef/v1/gw/gw-1/stats") == "gw-1"
    for not_one in (
        "ef/v1/gw/gw-1",
        "ef/v1/gw//stats",
        "ef/v1/gw/a/b/stats",
        "ef/v1/gw/+/stats",
        "ef/v1/dev/gw-1/stats",
        "ef/v1/gw/gw-1/stats/x",
    ):
        assert topics.parse_gateway_stats(not_one) is None, not_one
    with pytest.raises(ValueError, match="gateway id '#' cannot be an MQTT topic level"):
        topics.gateway_stats("#")
