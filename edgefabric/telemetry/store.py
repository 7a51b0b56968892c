"""Store/controller metrics: the fleet per device group, rollout progress, repository traffic.

Fleet gauges are computed at every scrape from the fleet view's device reports (anything with
the attributes of :class:`DeviceReport`); rollout gauges hold the last progress summary the
controller published for each rollout; repository counters are fed by the distribution
server's answer hook. Nothing here imports the store's own modules.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["DeviceReport", "StoreMetrics"]


class DeviceReport(Protocol):
    """What the fleet last heard from one device (``model_store``'s ``DeviceView`` fits)."""

    @property
    def labels(self) -> Mapping[str, str]: ...
    @property
    def online(self) -> bool: ...
    @property
    def active(self) -> Mapping[str, int]: ...
    @property
    def failed(self) -> Mapping[str, frozenset[int]]: ...
    @property
    def requests(self) -> Mapping[tuple[str, int], int]: ...
    @property
    def errors(self) -> Mapping[tuple[str, int], int]: ...
    @property
    def p99_ms(self) -> Mapping[tuple[str, int], float]: ...


Devices = Callable[[], Mapping[str, DeviceReport]]
_Family = GaugeMetricFamily | CounterMetricFamily


class _Fleet(Collector):
    def __init__(self, devices: Devices, group_label: str) -> None:
        self._devices = devices
        self._group_label = group_label

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        devices, serving, failed, requests, errors, p99 = self._families()
        online: Tally[tuple[str, str]] = Tally()
        versions: Tally[tuple[str, str, str]] = Tally()
        failing: Tally[tuple[str, str]] = Tally()
        sums: dict[tuple[str, str, str], list[float]] = {}
        for view in self._devices().values():
            group = view.labels.get(self._group_label, "")
            online[group, "true" if view.online else "false"] += 1
            for model, versions_failed in view.failed.items():
                if versions_failed:
                    failing[group, model] += 1
            if view.online:
                for model, version in view.active.items():
                    versions[group, model, str(version)] += 1
            for (model, version), count in view.requests.items():
                entry = sums.setdefault((group, model, str(version)), [0.0, 0.0, 0.0])
                entry[0] += count
                entry[1] += view.errors.get((model, version), 0)
                entry[2] = max(entry[2], view.p99_ms.get((model, version), 0.0) / 1000)
        for (group, state), count in sorted(online.items()):
            devices.add_metric([group, state], count)
        for key, count in sorted(versions.items()):
            serving.add_metric(list(key), count)
        for (group, model), count in sorted(failing.items()):
            failed.add_metric([group, model], count)
        for key, (total, bad, worst) in sorted(sums.items()):
            requests.add_metric(list(key), total)
            errors.add_metric(list(key), bad)
            p99.add_metric(list(key), worst)
        yield from (devices, serving, failed, requests, errors, p99)

    @staticmethod
    def _families() -> tuple[_Family, ...]:
        by_version = ["group", "model", "version"]
        return (
            GaugeMetricFamily(
                "edgefabric_fleet_devices",
                "Known devices per device group, by online state",
                labels=["group", "online"],
            ),
            GaugeMetricFamily(
                "edgefabric_fleet_model_devices",
                "Online devices per group serving each model version",
                labels=by_version,
            ),
            GaugeMetricFamily(
                "edgefabric_fleet_failed_devices",
                "Devices per group that report a failed version of the model",
                labels=["group", "model"],
            ),
            CounterMetricFamily(
                "edgefabric_fleet_agent_requests",
                "Inference requests devices of the group reported (sum of their counters)",
                labels=by_version,
            ),
            CounterMetricFamily(
                "edgefabric_fleet_agent_errors",
                "Failed inference requests devices of the group reported",
                labels=by_version,
            ),
            GaugeMetricFamily(
                "edgefabric_fleet_agent_p99_latency_seconds",
                "Worst p99 inference latency a device of the group reported",
                labels=by_version,
            ),
        )


class _Rollouts(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._summaries: dict[str, Mapping[str, object]] = {}

    def update(self, summary: Mapping[str, object]) -> None:
        with self._lock:
            self._summaries[str(summary["id"])] = dict(summary)

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        stage, stages, phase, devices = self._families()
        with self._lock:
            summaries = sorted(self._summaries.items())
        for rollout, summary in summaries:
            ref = [rollout, str(summary["model"]), str(summary["version"])]
            stage.add_metric(ref, float(str(summary["stage"])))
            stages.add_metric(ref, float(str(summary["stages"])))
            phase.add_metric([rollout, str(summary["phase"])], 1.0)
            counts = summary.get("devices")
            if isinstance(counts, Mapping):
                for step, count in sorted(counts.items()):
                    devices.add_metric([rollout, str(step)], float(count))
        yield from (stage, stages, phase, devices)

    @staticmethod
    def _families() -> tuple[_Family, ...]:
        ref = ["rollout", "model", "version"]
        return (
            GaugeMetricFamily("edgefabric_rollout_stage", "Current stage (1-based)", labels=ref),
            GaugeMetricFamily("edgefabric_rollout_stages", "Stages in the rollout", labels=ref),
            GaugeMetricFamily(
                "edgefabric_rollout_phase",
                "1 for the rollout's current phase (RUNNING, BAKING, COMPLETED, ...)",
                labels=["rollout", "phase"],
            ),
            GaugeMetricFamily(
                "edgefabric_rollout_devices",
                "Devices the rollout touched, by step (ASSIGNED, INSTALLED, FAILED, ...)",
                labels=["rollout", "step"],
            ),
        )


class StoreMetrics:
    """The store's metrics in a registry of their own (serve it with ``MetricsEndpoint``).

    ``group_label``: the device label whose value names a device's group ("" when absent).
    """

    def __init__(self, devices: Devices, *, group_label: str = "group") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.repo_requests = Counter(
            "edgefabric_repo_requests",
            "Repository requests answered over MQTT, by kind (metadata, targets) and status",
            ["kind", "status"],
            registry=self.registry,
        )
        self.repo_bytes = Counter(
            "edgefabric_repo_served_bytes",
            "Repository bytes sent to devices, by kind (metadata, targets)",
            ["kind"],
            registry=self.registry,
        )
        self.repo_chunks = Counter(
            "edgefabric_repo_served_chunks",
            "Repository chunks (answers carrying data) sent to devices, by kind",
            ["kind"],
            registry=self.registry,
        )
        self._rollouts = _Rollouts()
        self.registry.register(_Fleet(devices, group_label))
        self.registry.register(self._rollouts)

    def on_answer(self, path: str, status: str, data_bytes: int) -> None:
        """The distribution server answered a request for ``path`` with ``status``."""
        head = path.split("/", 1)[0]
        kind = head if head in ("metadata", "targets") else "other"
        self.repo_requests.labels(kind, status).inc()
        if data_bytes:
            self.repo_bytes.labels(kind).inc(data_bytes)
            self.repo_chunks.labels(kind).inc()

    def on_rollout(self, summary: Mapping[str, object]) -> None:
        """The controller's latest progress summary of one rollout (``rollout_summary``)."""
        self._rollouts.update(summary)
