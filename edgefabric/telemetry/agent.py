"""Edge agent metrics: slots and versions, installs, rollbacks, transfers, the broker link.

The agent feeds them through plain callables and two hooks (its event listeners and the
fetcher's chunk observer), so nothing here knows the agent's classes. Inference latency is
already counted by the ``ServingMetrics`` of the agent's device server; these metrics go into
that same registry and are served together on ``agent run --metrics-port``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["AgentMetrics", "SlotRows"]

SlotRows = Callable[[], Iterable[tuple[str, int, str]]]
"""Every (model, version, slot state name) the device knows of, read at every scrape."""

_SELF_TEST_FAILED = "failed its self-test"


def _kind(path: str) -> str:
    """``metadata`` or ``targets``: the first level of a repository path."""
    head = path.split("/", 1)[0]
    return head if head in ("metadata", "targets") else "other"


class _AgentState(Collector):
    def __init__(
        self,
        slots: SlotRows,
        served: Callable[[], Mapping[str, int]],
        connected: Callable[[], bool],
    ) -> None:
        self._slots = slots
        self._served = served
        self._connected = connected

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        slots, served, connected = self._families()
        for _ in range(3):  # the agent's loop may change a dict while this thread reads it
            try:
                rows = sorted(self._slots())
                serving = sorted(self._served().items())
                break
            except RuntimeError:
                continue
        else:
            rows, serving = [], []
        for model, version, state in rows:
            slots.add_metric([model, str(version), state], 1.0)
        for model, version in serving:
            served.add_metric([model, str(version)], 1.0)
        connected.add_metric([], 1.0 if self._connected() else 0.0)
        yield from (slots, served, connected)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "edgefabric_agent_slot_state",
                "1 for each model version on the device, labelled with its slot state",
                labels=["model", "version", "state"],
            ),
            GaugeMetricFamily(
                "edgefabric_agent_model_serving",
                "1 for the version of each model the device serves now",
                labels=["model", "version"],
            ),
            GaugeMetricFamily(
                "edgefabric_agent_mqtt_connected",
                "1 while the agent holds an acknowledged connection to the broker",
            ),
        )


class AgentMetrics:
    """The agent's metrics, in the registry of its device server's ``ServingMetrics``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        slots: SlotRows,
        served: Callable[[], Mapping[str, int]],
        connected: Callable[[], bool],
    ) -> None:
        self.events = Counter(
            "edgefabric_agent_events",
            "Lifecycle events the agent reported, by kind (DOWNLOAD_STARTED, SWITCHED, ...)",
            ["kind"],
            registry=registry,
        )
        self.self_tests = Counter(
            "edgefabric_agent_self_tests",
            "Golden-vector self-tests of newly installed versions, by result (passed, failed)",
            ["model", "result"],
            registry=registry,
        )
        self.rollbacks = Counter(
            "edgefabric_agent_rollbacks",
            "Times the agent went back to a previous version of a model",
            ["model"],
            registry=registry,
        )
        self.install_failures = Counter(
            "edgefabric_agent_install_failures",
            "Versions that failed to load or to pass their self-test",
            ["model"],
            registry=registry,
        )
        self.download_resumes = Counter(
            "edgefabric_agent_download_resumes",
            "Model downloads resumed from bytes kept on disk",
            ["model"],
            registry=registry,
        )
        self.transfer_bytes = Counter(
            "edgefabric_agent_transfer_bytes",
            "Bytes received from the store's repository, by kind (metadata, targets)",
            ["kind"],
            registry=registry,
        )
        self.transfer_chunks = Counter(
            "edgefabric_agent_transfer_chunks",
            "Chunks received from the store's repository, by kind (metadata, targets)",
            ["kind"],
            registry=registry,
        )
        registry.register(_AgentState(slots, served, connected))

    def on_event(self, kind: str, model: str, message: str) -> None:
        """One agent event (``kind`` is the ``Event.Kind`` name)."""
        self.events.labels(kind).inc()
        if kind == "SELF_TEST_PASSED":
            self.self_tests.labels(model, "passed").inc()
        elif kind == "INSTALL_FAILED":
            self.install_failures.labels(model).inc()
            if _SELF_TEST_FAILED in message:
                self.self_tests.labels(model, "failed").inc()
        elif kind == "ROLLED_BACK":
            self.rollbacks.labels(model).inc()
        elif kind == "DOWNLOAD_RESUMED":
            self.download_resumes.labels(model).inc()

    def on_chunk(self, path: str, offset: int, size: int) -> None:
        """One chunk of ``size`` bytes of repository file ``path`` arrived from the store."""
        kind = _kind(path)
        self.transfer_bytes.labels(kind).inc(size)
        self.transfer_chunks.labels(kind).inc()
