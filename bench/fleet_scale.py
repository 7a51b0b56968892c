"""Fleet scale: 100, 300 and 1,000 simulated devices on one private mosquitto, side by side.

For each fleet size, with a fresh broker, store (a copy of one made for the run with
``keys init`` and ``model push`` of mlp:1 and mlp:2), simulator process and controller:

* ``online``: start the store's serving side in this process (``StoreServer``: its fleet view
  and the rollout controller, ticking every ``--controller-interval-s``), then
  ``edgefabric fleet simulate`` (its own process: one MQTT connection per device, all on one
  ``MqttLoop`` thread; every device serves mlp:1 and trusts the store's ``controller.pub``) and
  time until the controller's ``FleetView`` sees every device online (``online_s``, simulator
  start-up included; ``simulator_connect_s`` is the simulator's own figure).
* ``rollout``: ``edgefabric rollout start mlp:2 --selector class=camera --stages 5%,25%,100%
  --bake 0 --gate selftest`` as the command line, then follow the retained progress on
  ``ef/v1/rollouts/{id}`` until it says COMPLETED: ``converge_s`` from launching the command
  (interpreter start-up included; ``cli_s`` is the command alone), when each stage was first
  reported (``stage_started_s``: progress goes out at the end of a tick, after that stage's
  desired states were sent; with zero bake a stage settles and the next starts within one
  tick, so BAKING is not published); the controller's ticks (count, time inside them, the
  longest), this process's CPU time, and its resident memory sampled every 0.1 s through the
  rollout (``controller_rss_*``). After every size, ``rollout_growth`` puts them side by side.
* ``memory``: resident memory of this process (the controller side: StoreServer with its fleet
  view, registry and one MQTT connection) and of the simulator; events lost on the way.
* ``broadcast`` (``--broadcasts`` times): sign a desired state for every device
  (``seal_desired`` with the controller key, ed25519) and publish it retained from a second
  connection, bypassing the registry, then wait until every device reported RECONCILED for it:
  ``sign_publish_s``, ``converge_s`` (from the first signature). The lower bound of what a
  rollout's assignments cost. It runs after the steps: its sequences, one above what the
  devices last reconciled, are not recorded in the registry the controller numbers from.
* ``status``: ``fleet status`` of the saved device table: in process (``read_rows`` + render,
  ``query_ms``) and as the command line, run ``--status-runs`` times (``cli_s``: the median;
  interpreter start-up included, ``cli_startup_only_s`` is ``edgefabric --help``).

Each step is a function of the running fleet (:data:`STEPS`). The broker keeps up to
``--broker-queue`` QoS 1 messages queued per client: mosquitto's default (1000) drops events to
the controller when 1,000 devices reconcile at once.

With ``--profile``, each controller tick runs under ``cProfile`` (in the controller's thread),
and a ``profile`` result per size lists where the rollout's controller time went (profiling
slows the ticks, so the rollout figures of that run are not the unprofiled ones).

With ``--clients``, last, the reason for ``MqttLoop``: N connections in this process with a
paho thread each versus all on one loop thread (connect time, resident memory, idle CPU over
2 s, or the error when the connections do not all come up).

Prints one JSON object per result; writes bench/results/fleet_scale.json.

    .venv/bin/python -m bench.fleet_scale [--sizes 100,300,1000] [--broadcasts 3] [--profile]
        [--controller-interval-s 0.2] [--status-runs 3] [--clients]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import queue
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import model_store.serve
from bench._common import emit, rss_mib, save
from edgefabric import topics
from edgefabric.desired import seal_desired
from edgefabric.errors import TransportError
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress, Message, MqttClient, MqttLoop
from edgefabric.samples import mlp_model
from edgefabric.wire.v1.fleet_pb2 import DesiredState, ModelRef
from model_store.controller import RolloutController
from model_store.fleet import controller_key
from model_store.fleet_view import FleetView, read_rows, render
from model_store.home import StoreHome
from model_store.serve import StoreServer, StoreServerOptions
from model_store.store import ModelStore

WAIT_S = 120.0
ROLLOUT_WAIT_S = 600.0
ROLLOUT_ARGS = ("mlp:2", "--selector", "class=camera", "--stages", "5%,25%,100%", "--bake", "0",
                "--gate", "selftest")  # fmt: skip
_FINAL_PHASES = frozenset({"COMPLETED", "ROLLED_BACK", "ABORTED"})
_RSS_SAMPLE_S = 0.1
_CONTROLLER = "RolloutController"  # the name StoreServer's controller thread looks up


class TimedController(RolloutController):
    """The store's controller, timing each tick; ``profile`` (when set) runs under cProfile.

    Installed as ``model_store.serve.RolloutController`` while the bench runs (see
    :func:`timed_controller`), so the StoreServer's own controller thread uses it.
    """

    profile: cProfile.Profile | None = None
    lock = threading.Lock()
    ticks = 0
    busy_s = 0.0
    longest_s = 0.0

    def tick(self) -> None:
        profile = type(self).profile
        started = time.perf_counter()
        if profile is not None:
            profile.enable()  # the controller's thread: cProfile follows the calling thread
        try:
            super().tick()
        finally:
            if profile is not None:
                profile.disable()
            spent = time.perf_counter() - started
            with TimedController.lock:
                TimedController.ticks += 1
                TimedController.busy_s += spent
                TimedController.longest_s = max(TimedController.longest_s, spent)

    @classmethod
    def reset(cls) -> tuple[int, float]:
        """Zero the counters; returns what they were (ticks, busy seconds)."""
        with cls.lock:
            before = (cls.ticks, cls.busy_s)
            cls.ticks, cls.busy_s, cls.longest_s = 0, 0.0, 0.0
        return before

    @classmethod
    def snapshot(cls) -> dict[str, Any]:
        with cls.lock:
            return {
                "controller_ticks": cls.ticks,
                "controller_busy_s": round(cls.busy_s, 3),
                "controller_longest_tick_s": round(cls.longest_s, 3),
            }


@contextmanager
def timed_controller() -> Iterator[None]:
    """StoreServers started inside use :class:`TimedController`."""
    original = getattr(model_store.serve, _CONTROLLER)
    setattr(model_store.serve, _CONTROLLER, TimedController)
    try:
        yield
    finally:
        setattr(model_store.serve, _CONTROLLER, original)


@dataclass
class Fleet:
    """One running fleet: broker, simulator process, the store and its serving side."""

    size: int
    broker: PrivateBroker
    home: Path
    key: Ed25519PrivateKey
    broadcaster: MqttClient
    server: StoreServer
    simulator: subprocess.Popen[str]
    profile: bool = False
    sequence: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def view(self) -> FleetView:
        return self.server.fleet


Step = Callable[[Fleet], dict[str, Any]]


def edgefabric(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One ``edgefabric`` command line with ``EDGEFABRIC_HOME`` set to the store."""
    env = {**os.environ, "EDGEFABRIC_HOME": str(home)}
    command = [sys.executable, "-m", "edgefabric.cli", "--log-level", "WARNING", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True)


def make_store(root: Path) -> Path:
    """A store home with its keys and mlp:1 (hidden 32) and mlp:2 (hidden 48) pushed."""
    home = root / "store-template"
    edgefabric(home, "keys", "init")
    for version, hidden in ((1, 32), (2, 48)):
        path = root / f"mlp{version}.onnx"
        path.write_bytes(mlp_model(hidden=hidden).SerializeToString())
        edgefabric(home, "model", "push", str(path), "--name", "mlp")
    return home


class RssSampler:
    """Resident memory of this process every ``interval_s`` in a thread, until stopped."""

    def __init__(self, interval_s: float = _RSS_SAMPLE_S) -> None:
        self.samples: list[float] = [rss_mib_self()]
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(rss_mib_self())

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.samples.append(rss_mib_self())


@dataclass
class Progress:
    """One rollout as its retained progress told it, in seconds since ``rollout start``."""

    rollout_id: str
    started: float
    summary: dict[str, Any] = field(default_factory=dict)
    first_s: float | None = None
    finished_s: float | None = None
    stage_started_s: dict[str, float] = field(default_factory=dict)

    def follow(self, updates: queue.Queue[tuple[float, dict[str, Any]]], timeout_s: float) -> None:
        """Take in progress messages until a final phase (or ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while self.finished_s is None:
            try:
                at, summary = updates.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if summary.get("id") != self.rollout_id:
                continue
            self.summary = summary
            since = round(at - self.started, 3)
            self.first_s = since if self.first_s is None else self.first_s
            self.stage_started_s.setdefault(str(summary["stage"]), since)
            if summary["phase"] in _FINAL_PHASES:
                self.finished_s = since


def rollout(fleet: Fleet) -> dict[str, Any]:
    """``rollout start`` on the command line; wait for the retained progress to say COMPLETED."""
    fleet.view.flush()  # `rollout start` learns the devices and their labels from the table
    updates: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()

    def received(message: Message) -> None:
        if message.payload:
            updates.put((time.perf_counter(), json.loads(message.payload)))

    watcher = MqttClient(BrokerAddress.parse(fleet.broker.url), "bench-rollout-watcher")
    watcher.connect()
    watcher.subscribe(topics.ALL_ROLLOUTS, received, qos=1)
    profile = cProfile.Profile() if fleet.profile else None
    TimedController.profile = profile
    TimedController.reset()
    cpu = time.process_time()
    try:
        with RssSampler() as rss:
            started = time.perf_counter()
            out = edgefabric(fleet.home, "rollout", "start", *ROLLOUT_ARGS).stdout
            cli_s = time.perf_counter() - started
            found = re.search(r"started (ro-[0-9a-f]{8})", out)
            if found is None:
                raise RuntimeError(f"rollout start said {out!r}")
            progress = Progress(found[1], started)
            progress.follow(updates, ROLLOUT_WAIT_S)
    finally:
        TimedController.profile = None
        watcher.close()
    cpu_s = time.process_time() - cpu
    if profile is not None:
        fleet.notes["profile"] = profile_summary(profile)
    finished_s = progress.finished_s
    return {
        "rollout": " ".join(ROLLOUT_ARGS),
        "id": progress.rollout_id,
        "phase": progress.summary.get("phase"),
        "converged": progress.summary.get("phase") == "COMPLETED",
        "devices_installed": progress.summary.get("devices", {}).get("INSTALLED", 0),
        "cli_s": round(cli_s, 3),
        "first_progress_s": progress.first_s,
        "stage_started_s": progress.stage_started_s,
        "converge_s": finished_s,
        "ms_per_device": round(finished_s * 1000 / fleet.size, 2) if finished_s else None,
        **TimedController.snapshot(),
        "process_cpu_s": round(cpu_s, 3),
        "controller_rss_start_mib": rss.samples[0],
        "controller_rss_peak_mib": max(rss.samples),
        "controller_rss_end_mib": rss.samples[-1],
        "profiled": fleet.profile,
    }


def profile_summary(profile: cProfile.Profile, top: int = 25) -> list[dict[str, Any]]:
    """The controller's functions with the most cumulative time during the rollout."""
    stats = pstats.Stats(profile)
    rows = []
    for (filename, line, name), (_, calls, own_s, cum_s, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = Path(filename)
        short = f"{where.parent.name}/{where.name}:{line}" if line else filename
        rows.append({"function": f"{short}({name})", "calls": calls,
                     "cum_s": round(cum_s, 3), "own_s": round(own_s, 3)})  # fmt: skip
    rows.sort(key=lambda row: row["cum_s"], reverse=True)
    return rows[:top]


def broadcast(fleet: Fleet) -> dict[str, Any]:
    """Desired state for every device, signed and published; wait for every RECONCILED."""
    last = max(fleet.view.reconciled_sequences().values(), default=0)
    fleet.sequence = max(fleet.sequence, last) + 1
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
        fleet.broadcaster.publish(topics.device_desired(device_id), payload, qos=1, retain=True)
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


def status(fleet: Fleet, runs: int) -> dict[str, Any]:
    """``fleet status`` of the saved table, in process and as the command line (``runs``)."""
    fleet.view.flush()  # the table is what `fleet status` reads
    table = fleet.home / "fleet.sqlite3"
    started = time.perf_counter()
    rows = read_rows(table)
    text = render(rows, {}, now_s=time.time())
    query_ms = (time.perf_counter() - started) * 1000
    cli_runs: list[float] = []
    rows_ok = True
    for _ in range(runs):
        started = time.perf_counter()
        cli = edgefabric(fleet.home, "fleet", "status")
        cli_runs.append(time.perf_counter() - started)
        rows_ok = rows_ok and f"{len(rows)} devices" in cli.stdout
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "edgefabric.cli", "--help"], capture_output=True, check=True
    )
    startup_s = time.perf_counter() - started
    return {
        "rows": len(rows),
        "lines": text.count("\n") + 1,
        "query_ms": round(query_ms, 1),
        "cli_s": round(statistics.median(cli_runs), 3),
        "cli_runs_s": [round(run, 3) for run in cli_runs],
        "cli_startup_only_s": round(startup_s, 3),
        "cli_rows_ok": rows_ok,
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
    size: int, workdir: Path, template: Path, options: argparse.Namespace
) -> Iterator[tuple[Fleet, dict[str, float]]]:
    """A broker, a copy of the store served in this process, a simulator of ``size`` devices."""
    home = Path(shutil.copytree(template, workdir / "home"))
    with (
        PrivateBroker(
            workdir / "mosquitto", extra_config=f"max_queued_messages {options.broker_queue}"
        ) as broker,
        timed_controller(),
    ):
        address = BrokerAddress.parse(broker.url)
        store = ModelStore(StoreHome(home))
        server = StoreServer(
            store,
            StoreServerOptions(
                broker=address,
                client_id="edgefabric-store-bench",
                controller_interval_s=options.controller_interval_s,
            ),
        )
        server.start()
        broadcaster = MqttClient(address, "edgefabric-broadcast-bench")
        command = [
            sys.executable, "-m", "edgefabric.cli", "--log-level", "WARNING", "fleet", "simulate",
            "--broker", broker.url, "--devices", str(size),
            "--labels", "site=plant-{i%10},class=camera", "--serving", "mlp:1",
            "--desired-key", str(home / "controller.pub"), "--health-interval-s", "5",
        ]  # fmt: skip
        simulator: subprocess.Popen[str] | None = None
        try:
            broadcaster.connect()
            key = controller_key(StoreHome(home))
            started = time.perf_counter()
            simulator = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
            fleet = Fleet(
                size, broker, home, key, broadcaster, server, simulator, profile=options.profile
            )
            assert simulator.stdout is not None
            line = simulator.stdout.readline()
            if not line.startswith("simulating"):
                raise RuntimeError(f"the simulator did not start: {line!r}")
            online = fleet.view.wait_for(
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
            if simulator is not None:
                simulator.terminate()
                simulator.wait(60)
                if simulator.stdout is not None:
                    simulator.stdout.close()
            broadcaster.close()
            server.stop()
            store.close()


STEPS: list[tuple[str, Step]] = [("rollout", rollout), ("memory", memory)]


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


def growth(results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How rollout convergence grows with the fleet: per size, and relative to the smallest."""
    done = [r for r in results if r.get("step") == "rollout" and r.get("converge_s")]
    if len(done) < 2:
        return None
    smallest = min(done, key=lambda r: r["devices"])
    return {
        "bench": "fleet_scale",
        "step": "rollout_growth",
        "profiled": any(r["profiled"] for r in done),
        "converge_s": {str(r["devices"]): r["converge_s"] for r in done},
        "ms_per_device": {str(r["devices"]): r["ms_per_device"] for r in done},
        "controller_busy_s": {str(r["devices"]): r["controller_busy_s"] for r in done},
        "controller_rss_peak_mib": {str(r["devices"]): r["controller_rss_peak_mib"] for r in done},
        "x_of_smallest": {
            str(r["devices"]): {
                "devices": round(r["devices"] / smallest["devices"], 1),
                "converge": round(r["converge_s"] / smallest["converge_s"], 1),
            }
            for r in done
        },
    }


def run(sizes: list[int], options: argparse.Namespace) -> list[dict[str, Any]]:
    """Every step for every fleet size."""
    results: list[dict[str, Any]] = []
    emit({"bench": "fleet_scale", "step": "baseline", "process_rss_mib": rss_mib_self()}, results)
    with tempfile.TemporaryDirectory() as tmp:
        template = make_store(Path(tmp))
        for size in sizes:
            with (
                tempfile.TemporaryDirectory() as work,
                running_fleet(size, Path(work), template, options) as (fleet, online),
            ):
                line = {"bench": "fleet_scale", "devices": size}
                emit({**line, "step": "online", **online}, results)
                for name, step in STEPS:
                    emit({**line, "step": name, **step(fleet)}, results)
                for _ in range(options.broadcasts):
                    emit({**line, "step": "broadcast", **broadcast(fleet)}, results)
                emit({**line, "step": "status", **status(fleet, options.status_runs)}, results)
                if "profile" in fleet.notes:
                    emit({**line, "step": "profile", "top": fleet.notes["profile"]}, results)
    summary = growth(results)
    if summary is not None:
        emit(summary, results)
    if options.clients:
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
        "--controller-interval-s", type=float, default=0.2, help="rollout controller tick"
    )
    parser.add_argument("--status-runs", type=int, default=3, help="`fleet status` CLI runs")
    parser.add_argument(
        "--profile", action="store_true", help="run the controller's ticks under cProfile"
    )
    parser.add_argument(
        "--clients", action="store_true", help="also compare a thread per client with MqttLoop"
    )
    parser.add_argument(
        "--output", type=Path, help="write the results here, not to bench/results/fleet_scale.json"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sizes = [int(size) for size in args.sizes.split(",")]
    results = run(sizes, args)
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"saved {args.output}", file=sys.stderr)
    else:
        print(f"saved {save('fleet_scale', results)}", file=sys.stderr)


if __name__ == "__main__":
    main()
