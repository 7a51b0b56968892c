"""Broker, store, controller, agents and gateway on one machine, started in order.

:class:`LocalFabric` is what ``edgefabric up`` runs in the foreground and what ``make demo``
drives: a private mosquitto on a free loopback port, a signed model store with a real ONNX
model (two versions), ``store serve`` (distribution, fleet view, rollout controller), N edge
agents, and a gateway that serves the model from its own ONNX Runtime session (``local``) and
relays it to the agents over MQTT (``edge``) under one route.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from edgefabric import topics
from edgefabric.fabric.processes import Child, run_command
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress, Message, MqttClient
from edgefabric.samples import mlp_model
from edgefabric.wire.v1.gateway_pb2 import GatewayStats

if TYPE_CHECKING:
    from model_store.fleet_records import DeviceRow

__all__ = ["FabricOptions", "LocalFabric", "PoolTotals"]

MODEL = "mlp"
_HIDDEN_BY_VERSION = {1: 32, 2: 48}


@dataclass(frozen=True)
class PoolTotals:
    """What the gateway routed to one model in one pool, summed over its reports."""

    requests: int = 0
    errors: int = 0
    last_p99_ms: float = 0.0


@dataclass(frozen=True)
class FabricOptions:
    """What to run. ``edge_weight`` is the share of requests the route sends to the agents."""

    work_dir: Path
    agents: int = 3
    edge_weight: float = 0.5
    wait_s: float = 90.0
    sites: tuple[str, ...] = ("north", "south")
    route_extra: str = ""
    report_interval_s: float = 2.0
    gateway_args: tuple[str, ...] = field(default=())


class LocalFabric:
    """A running fabric; a context manager that stops every part in reverse order."""

    def __init__(self, options: FabricOptions) -> None:
        if options.agents < 1:
            raise ValueError(f"a fabric needs at least one agent, got {options.agents}")
        if not 0.0 <= options.edge_weight <= 1.0:
            raise ValueError(f"edge_weight must be within [0, 1], got {options.edge_weight}")
        self.options = options
        self.home = options.work_dir / "store"
        self.devices = tuple(f"device-{index + 1}" for index in range(options.agents))
        self._stack = ExitStack()
        self._rollouts: queue.Queue[dict[str, Any]] = queue.Queue()
        self.broker: PrivateBroker | None = None
        self.gateway: Child | None = None
        self.agents: dict[str, Child] = {}
        self.dashboard_url = ""
        self._pool_lock = threading.Lock()
        self._pool_totals: dict[str, PoolTotals] = {}

    @property
    def broker_url(self) -> str:
        """mqtt://HOST:PORT of the private broker."""
        if self.broker is None:
            raise RuntimeError("the fabric is not started")
        return self.broker.url

    @property
    def gateway_endpoint(self) -> str:
        """HOST:PORT of the gateway's KServe v2 gRPC API."""
        if self.gateway is None:
            raise RuntimeError("the fabric is not started")
        return self.gateway.endpoint

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalFabric:
        try:
            self.start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Store with two model versions, broker, store serve, agents, gateway."""
        work = self.options.work_dir
        work.mkdir(parents=True, exist_ok=True)
        self._prepare_store()
        repository = work / "gateway-models"
        run_command(self.home, "model", "export", MODEL, "--to", str(repository))
        self.broker = self._stack.enter_context(PrivateBroker(work / "broker"))
        store = Child(
            "store", self.home, "store", "serve", "--broker", self.broker.url,
            "--http-port", "0", ready="serving", extra_lines=1,
        )  # fmt: skip
        self._stack.callback(store.stop)
        self.dashboard_url = store.extra_lines[0].rsplit(" ", 1)[-1]
        watcher = self._stack.enter_context(
            MqttClient(BrokerAddress.parse(self.broker.url), "fabric-watch")
        )
        watcher.subscribe(
            topics.ALL_ROLLOUTS, lambda message: self._rollouts.put(json.loads(message.payload))
        )
        watcher.subscribe(topics.ALL_GATEWAY_STATS, self._on_gateway_stats)
        for index, device in enumerate(self.devices):
            site = self.options.sites[index % len(self.options.sites)]
            agent = Child(
                device, self.home, "agent", "run", "--device-id", device,
                "--broker", self.broker.url,
                "--trust-root", str(self.home / "tuf" / "metadata" / "root.json"),
                "--desired-key", str(self.home / "controller.pub"),
                "--data-dir", str(work / "agents" / device), "--grpc-port", "0",
                "--label", f"site={site}", "--health-interval-s", "1",
                ready="serving on",
            )  # fmt: skip
            self._stack.callback(agent.stop)
            self.agents[device] = agent
        self._wait_for_devices()
        route = f"{MODEL}=local:{1 - self.options.edge_weight:g},edge:{self.options.edge_weight:g}"
        self.gateway = Child(
            "gateway", self.home, "gateway", "serve", "--model-repository", str(repository),
            "--grpc-port", "0", "--metrics-port", "0",
            "--pool", f"edge=mqtt://127.0.0.1:{self.broker.port}",
            "--route", route + self.options.route_extra,
            "--report-interval-s", f"{self.options.report_interval_s:g}",
            *self.options.gateway_args,
            ready="listening on",
        )  # fmt: skip
        self._stack.callback(self.gateway.stop)

    def stop(self) -> dict[str, int]:
        """Stop gateway, agents, store and broker; each child's exit code."""
        codes: dict[str, int] = {}
        if self.gateway is not None:
            codes["gateway"] = self.gateway.stop()
        for device, agent in self.agents.items():
            codes[device] = agent.stop()
        self._stack.close()
        return codes

    # ------------------------------------------------------------------ operations

    def rollout(self, version: int, stages: str = "34%,100%") -> dict[str, Any]:
        """Roll ``mlp:version`` out in stages with the self-test gate; the final summary."""
        out = run_command(
            self.home, "rollout", "start", f"{MODEL}:{version}", "--stages", stages,
            "--gate", "selftest",
        )  # fmt: skip
        rollout_id = out.split()[1].rstrip(":")
        deadline = time.monotonic() + self.options.wait_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"rollout {rollout_id} did not finish in {self.options.wait_s}s")
            try:
                summary = self._rollouts.get(timeout=remaining)
            except queue.Empty:
                continue
            if summary.get("id") == rollout_id and summary.get("phase") in _FINAL_PHASES:
                return summary

    def fleet_versions(self) -> dict[str, str]:
        """``device -> 'mlp:N'`` from the controller's device table."""
        versions = {}
        for row in self._device_rows():
            active = [f"{m.model}:{m.active}" for m in row.models if m.active is not None]
            versions[row.device_id] = ",".join(active) or "-"
        return versions

    def pool_totals(self) -> dict[str, PoolTotals]:
        """Requests per ``model · pool`` the gateway reported since the fabric started."""
        with self._pool_lock:
            return dict(self._pool_totals)

    # ------------------------------------------------------------------ internals

    def _on_gateway_stats(self, message: Message) -> None:
        report = GatewayStats.FromString(message.payload)
        with self._pool_lock:
            for interval in report.pools:
                key = f"{interval.model} · {interval.pool}"
                totals = self._pool_totals.get(key, PoolTotals())
                self._pool_totals[key] = PoolTotals(
                    requests=totals.requests + interval.requests,
                    errors=totals.errors + interval.errors,
                    last_p99_ms=interval.p99_ms or totals.last_p99_ms,
                )

    def _prepare_store(self) -> None:
        work = self.options.work_dir
        golden = work / "golden.npz"
        np.savez(golden, x=np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 16))
        run_command(self.home, "keys", "init")
        for version, hidden in _HIDDEN_BY_VERSION.items():
            path = work / f"{MODEL}-v{version}.onnx"
            path.write_bytes(mlp_model(hidden=hidden).SerializeToString())
            run_command(
                self.home, "model", "push", str(path), "--name", MODEL, "--golden", str(golden),
                "--lineage", "source_commit=fabric",
            )  # fmt: skip
        run_command(self.home, "model", "promote", f"{MODEL}:1", "--stage", "production")

    def _device_rows(self) -> list[DeviceRow]:
        """``fleet status`` rows from the controller's device table (none before it exists)."""
        from model_store.fleet_db import fleet_database_path  # noqa: PLC0415  (store side)
        from model_store.fleet_view import read_rows  # noqa: PLC0415
        from model_store.home import StoreHome  # noqa: PLC0415

        path = fleet_database_path(StoreHome(self.home))
        return read_rows(path) if path.exists() else []

    def _wait_for_devices(self) -> None:
        """Until the controller's device table lists every agent online (rollouts read it)."""
        deadline = time.monotonic() + self.options.wait_s
        while time.monotonic() < deadline:
            if sum(row.online for row in self._device_rows()) >= len(self.devices):
                return
            time.sleep(0.2)  # the table is flushed every 0.5 s by another process
        raise TimeoutError(f"agents did not all come online within {self.options.wait_s}s")


_FINAL_PHASES = ("COMPLETED", "ROLLED_BACK", "ABORTED", "SUPERSEDED")
