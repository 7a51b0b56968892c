"""Fleet scale: 100, 300 and 1,000 simulated devices on one private mosquitto, side by side.

For each fleet size, with a fresh broker, device table and simulator process:

* ``online``: start ``edgefabric fleet simulate`` (its own process: one MQTT connection per
  device, all on one ``MqttLoop`` thread) and time until this process's ``FleetView`` sees
  every device online (``online_s``, simulator start-up included; ``simulator_connect_s`` is the
  simulator's own figure for connecting every device).
* ``broadcast`` (``--broadcasts`` times): sign a desired state for every device
  (``seal_desired``, ed25519) and publish it retained, then wait until every device reported
  RECONCILED for it: ``sign_publish_s``, ``converge_s`` (from the first signature).
* ``status``: ``fleet status`` of the saved device table: in process (``read_rows`` + render,
  ``query_ms``) and as the command line (``cli_s``, interpreter start-up included).
* ``memory``: resident memory of this process (the controller side: FleetView with its table
  and one MQTT connection) and of the simulator; events lost on the way (gaps in event ids).

Each step is a function of the running fleet (:data:`STEPS`), so a rollout step can be added
once the controller runs one. The broker keeps up to ``--broker-queue`` QoS 1 messages queued
per client: mosquitto's default (1000) drops events to the controller when 1,000 devices
reconcile at once.

With ``--clients``, last, the reason for ``MqttLoop``: N connections in this process with a
paho thread each versus all on one loop thread (connect time, resident memory, idle CPU over
2 s, or the error when the connections do not all come up).

Prints one JSON object per result; writes bench/results/fleet_scale.json.

    .venv/bin/python -m bench.fleet_scale [--sizes 100,300,1000] [--broadcasts 3] [--clients]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._common import emit, rss_mib, save
from edgefabric import topics
from edgefabric.desired import seal_desired
from edgefabric.errors import TransportError
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress, MqttClient, MqttLoop
from edgefabric.wire.v1.fleet_pb2 import DesiredState, ModelRef
from model_store.fleet_view import FleetView, read_rows, render

WAIT_S = 120.0


@dataclass
class Fleet:
    """One running fleet: broker, simulator process, and the controller's side."""

    size: int
    broker: PrivateBroker
    home: Path
    key: Ed25519PrivateKey
    controller: MqttClient
    view: FleetView
    simulator: subprocess.Popen[str]
    sequence: int = 0


Step = Callable[[Fleet], dict[str, Any]]


def broadcast(fleet: Fleet) -> dict[str, Any]:
    """Desired state for every device, signed and published; wait for every RECONCILED."""
    fleet.sequence += 1
    sequence, version = fleet.sequence, 2 if fleet.sequence % 2 else 1
    devices = sorted(fleet.view.devices())
    started = time.perf_counter()
    for device_id in devices:
        state = DesiredState(
            device_id=device_id,
            sequence=sequence,
            models=[ModelRef(name="mlp", version=version)],
            issued_at_ms=int(time.time() * 1000),
        )
        payload = seal_desired(state, fleet.key)
        fleet.controller.publish(topics.device_desired(device_id), payload, qos=1, retain=True)
    published = time.perf_counter()
    converged = fleet.view.wait_for(
        lambda _: min(fleet.view.reconciled_sequences().values()) >= sequence, WAIT_S
    )
    finished = time.perf_counter()
    on_version = sum(v.active.get("mlp") == version for v in fleet.view.devices().values())
    return {
        "sequence": sequence,
        "version": version,
        "converged": converged,
        "devices_on_version": on_version,
        "sign_publish_s": round(published - started, 3),
        "converge_s": round(finished - started, 3),
        "controller_rss_mib": rss_mib_self(),
    }


def status(fleet: Fleet) -> dict[str, Any]:
    """``fleet status`` of the saved table, in process and as the command line."""
    fleet.view.stop()  # writes what is unsaved; the table is what `fleet status` reads
    table = fleet.home / "fleet.sqlite3"
    started = time.perf_counter()
    rows = read_rows(table)
    text = render(rows, {}, now_s=time.time())
    query_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    cli = subprocess.run(
        [sys.executable, "-m", "edgefabric.cli", "fleet", "status", "--home", str(fleet.home)],
        capture_output=True,
        text=True,
        check=True,
    )
    cli_s = time.perf_counter() - started
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "edgefabric.cli", "--help"], capture_output=True, check=True
    )
    startup_s = time.perf_counter() - started
    return {
        "rows": len(rows),
        "lines": text.count("\n") + 1,
        "query_ms": round(query_ms, 1),
        "cli_s": round(cli_s, 3),
        "cli_startup_only_s": round(startup_s, 3),
        "cli_rows_ok": f"{len(rows)} devices" in cli.stdout,
    }


def memory(fleet: Fleet) -> dict[str, Any]:
    """Resident memory of both sides, and events lost on the way."""
    rows = fleet.view.rows()
    return {
        "controller_rss_mib": rss_mib_self(),
        "simulator_rss_mib": rss_mib(fleet.simulator.pid),
        "lost_events": sum(row.missed_events for row in rows),
        "dropped_garbage": fleet.view.dropped,
    }


def rss_mib_self() -> float:
    """Resident memory of this process (the controller side), in MiB."""
    return rss_mib(os.getpid())


@contextmanager
def running_fleet(
    size: int, workdir: Path, broker_queue: int
) -> Iterator[tuple[Fleet, dict[str, float]]]:
    """A broker, this process's controller side, and a simulator of ``size`` devices."""
    key = Ed25519PrivateKey.generate()
    public = workdir / "controller.pub"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    home = workdir / "home"
    with PrivateBroker(
        workdir / "mosquitto", extra_config=f"max_queued_messages {broker_queue}"
    ) as broker:
        controller = MqttClient(BrokerAddress.parse(broker.url), "edgefabric-controller-bench")
        controller.connect()
        view = FleetView(controller, home / "fleet.sqlite3")
        view.start()
        command = [
            sys.executable, "-m", "edgefabric.cli", "--log-level", "WARNING", "fleet", "simulate",
            "--broker", broker.url, "--devices", str(size), "--labels", "site=plant-{i%10}",
            "--serving", "mlp:1", "--desired-key", str(public), "--health-interval-s", "5",
        ]  # fmt: skip
        started = time.perf_counter()
        simulator = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            fleet = Fleet(size, broker, home, key, controller, view, simulator)
            assert simulator.stdout is not None
            line = simulator.stdout.readline()
            if not line.startswith("simulating"):
                raise RuntimeError(f"the simulator did not start: {line!r}")
            online = view.wait_for(
                lambda views: sum(v.online for v in views.values()) == size, WAIT_S
            )
            if not online:
                raise RuntimeError(f"not every one of {size} devices came online")
            online_s = time.perf_counter() - started
            connect = re.search(r"online in ([0-9.]+) s", line)
            yield (
                fleet,
                {
                    "online_s": round(online_s, 3),
                    "simulator_connect_s": float(connect[1]) if connect else -1.0,
                },
            )
        finally:
            simulator.terminate()
            simulator.wait(60)
            view.stop()
            controller.close()


STEPS: list[tuple[str, Step]] = [("memory", memory)]


def clients(count: int, shared_loop: bool, workdir: Path) -> dict[str, Any]:
    """``count`` connections from this process: a paho thread each, or one MqttLoop."""
    result: dict[str, Any] = {"clients": count, "mode": "mqtt_loop" if shared_loop else "threads"}
    with (
        PrivateBroker(workdir / f"mosquitto-{count}-{result['mode']}") as broker,
        MqttLoop() as loop,
    ):
        address = BrokerAddress.parse(broker.url)
        rss_before, started = rss_mib_self(), time.perf_counter()
        connected: list[MqttClient] = []
        try:
            for index in range(count):
                client = MqttClient(address, f"bench-{index}", loop=loop if shared_loop else None)
                client.connect(5.0)
                connected.append(client)
            result["connect_s"] = round(time.perf_counter() - started, 3)
            result["rss_delta_mib"] = round(rss_mib_self() - rss_before, 1)
            result["threads"] = threading.active_count()
            cpu = time.process_time()
            time.sleep(2.0)  # idle: what the network threads cost while nothing happens
            result["idle_cpu_percent"] = round((time.process_time() - cpu) / 2.0 * 100, 1)
        except TransportError as error:
            result["failed_after"] = len(connected)
            result["error"] = str(error)
        finally:
            for client in connected:
                client.close()
    return result


def run(
    sizes: list[int], broadcasts: int, broker_queue: int, compare_clients: bool
) -> list[dict[str, Any]]:
    """Every step for every fleet size."""
    results: list[dict[str, Any]] = []
    emit({"bench": "fleet_scale", "step": "baseline", "process_rss_mib": rss_mib_self()}, results)
    for size in sizes:
        with (
            tempfile.TemporaryDirectory() as tmp,
            running_fleet(size, Path(tmp), broker_queue) as (fleet, online),
        ):
            line = {"bench": "fleet_scale", "devices": size}
            emit({**line, "step": "online", **online}, results)
            for _ in range(broadcasts):
                emit({**line, "step": "broadcast", **broadcast(fleet)}, results)
            for name, step in STEPS:
                emit({**line, "step": name, **step(fleet)}, results)
            emit({**line, "step": "status", **status(fleet)}, results)
    if compare_clients:
        with tempfile.TemporaryDirectory() as tmp:
            for count, shared_loop in ((300, False), (300, True), (1000, False), (1000, True)):
                emit(
                    {
                        "bench": "fleet_scale",
                        "step": "clients",
                        **clients(count, shared_loop, Path(tmp)),
                    },
                    results,
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="100,300,1000", help="fleet sizes, comma-separated")
    parser.add_argument("--broadcasts", type=int, default=3, help="desired-state rounds per size")
    parser.add_argument(
        "--broker-queue", type=int, default=100_000, help="mosquitto max_queued_messages"
    )
    parser.add_argument(
        "--clients", action="store_true", help="also compare a thread per client with MqttLoop"
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    results = run(sizes, args.broadcasts, args.broker_queue, args.clients)
    print(f"saved {save('fleet_scale', results)}", file=sys.stderr)


if __name__ == "__main__":
    main()
