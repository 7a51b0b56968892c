"""The fleet half of ``make demo``: store, private broker, edge agents, a staged upgrade.

Pushes a real ONNX model (two versions, with golden vectors) into a fresh store, serves the
store over a private mosquitto, starts edge agents as separate processes, assigns versions with
``edgefabric fleet assign`` and calls each agent's KServe v2 port with ``tritonclient``. Progress
is followed the way a controller follows it: on the devices' MQTT event topics.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from edgefabric import topics
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress, MqttClient
from edgefabric.samples import mlp_model
from edgefabric.wire.v1.fleet_pb2 import Event

__all__ = ["run_fleet_demo"]

DEVICES = ("camera-1", "camera-2")
WAIT_S = 60.0


def _cli(home: Path, *args: str) -> str:
    env = {**os.environ, "EDGEFABRIC_HOME": str(home)}
    command = [sys.executable, "-m", "edgefabric.cli", "--log-level", "WARNING", *args]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout


def _start(home: Path, *args: str, ready: str) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "EDGEFABRIC_HOME": str(home)}
    command = [sys.executable, "-m", "edgefabric.cli", "--log-level", "WARNING", *args]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if ready not in line:
        process.kill()
        raise SystemExit(f"{args[0]} failed to start: {line!r}")
    return process, line.strip()


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    if process.stdout is not None:
        process.stdout.close()


def _prepare_store(home: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    golden = work / "golden.npz"
    np.savez(golden, x=np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 16))
    _cli(home, "keys", "init")
    for version, hidden in ((1, 32), (2, 48)):
        path = work / f"mlp-v{version}.onnx"
        path.write_bytes(mlp_model(hidden=hidden).SerializeToString())
        pushed = _cli(
            home, "model", "push", str(path), "--name", "mlp",
            "--golden", str(golden), "--lineage", "source_commit=demo",
        )  # fmt: skip
        print(f"[demo] {pushed.strip()}")
    _cli(home, "model", "promote", "mlp:1", "--stage", "production")
    _cli(home, "model", "promote", "mlp:2", "--stage", "staging")
    for line in _cli(home, "model", "list").splitlines():
        print(f"[demo]   {line}")


def _wait_reconciled(events: queue.Queue[Event], devices: set[str]) -> None:
    waiting = set(devices)
    while waiting:
        event = events.get(timeout=WAIT_S)
        if event.kind in (Event.INSTALL_FAILED, Event.REJECTED):
            raise SystemExit(f"[demo] {event.device_id}: {event.message}")
        if event.kind == Event.RECONCILED and event.device_id in waiting:
            print(f"[demo] {event.device_id}: {event.message}")
            waiting.discard(event.device_id)


def _infer(endpoint: str) -> str:
    with triton.InferenceServerClient(endpoint) as client:
        tensor = triton.InferInput("x", [2, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((2, 16), np.float32))
        result = client.infer("mlp", [tensor])
        return f"version {result.get_response().model_version}, classes " + str(
            result.as_numpy("logits").argmax(axis=1).tolist()
        )


def run_fleet_demo(work: Path) -> dict[str, str]:
    """Run the fleet demo in ``work``; returns each device's final answer."""
    home = work / "store"
    _prepare_store(home, work)
    with ExitStack() as stack:
        broker = stack.enter_context(PrivateBroker(work / "broker"))
        print(f"[demo] private mosquitto on {broker.url}")
        store, line = _start(home, "store", "serve", "--broker", broker.url, ready="serving")
        stack.callback(_stop, store)
        print(f"[demo] {line}")
        watcher = stack.enter_context(MqttClient(BrokerAddress.parse(broker.url), "demo-watch"))
        events: queue.Queue[Event] = queue.Queue()
        watcher.subscribe(
            topics.ALL_DEVICE_EVENTS,
            lambda message: events.put(Event.FromString(message.payload)),
        )
        endpoints = {}
        for device in DEVICES:
            agent, line = _start(
                home, "agent", "run", "--device-id", device, "--broker", broker.url,
                "--trust-root", str(home / "tuf" / "metadata" / "root.json"),
                "--desired-key", str(home / "controller.pub"),
                "--data-dir", str(work / device), "--grpc-port", "0", "--label", "site=demo",
                ready="serving on",
            )  # fmt: skip
            stack.callback(_stop, agent)
            endpoints[device] = line.rsplit(" ", 1)[1]
            print(f"[demo] {line}")
        for device in DEVICES:
            _cli(home, "fleet", "assign", device, "mlp:1", "--broker", broker.url)
        _wait_reconciled(events, set(DEVICES))
        print(f"[demo] stage 1: {DEVICES[0]} gets the staging version mlp:2")
        _cli(home, "fleet", "assign", DEVICES[0], "mlp:2", "--broker", broker.url)
        _wait_reconciled(events, {DEVICES[0]})
        answers = {device: _infer(endpoint) for device, endpoint in endpoints.items()}
        for device, answer in answers.items():
            print(f"[demo] {device} answers with {answer}")
        print("[demo] audit log: " + _cli(home, "audit", "verify").strip())
    return answers
