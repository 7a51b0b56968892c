"""Latency the MQTT relay hop adds at 64 KB payloads: client -> gateway -> broker -> device.

The device is a process of its own holding what an edge agent serves with (a DataPlane over
``identity_fp32``, its KServe v2 gRPC server, and :class:`edge_agent.relay.InferRelay` on a
private mosquitto), and publishing the retained status and the health reports an agent does;
it skips the TUF install, which plays no part in the request path. Three paths, each with
tritonclient.grpc in a closed loop at concurrency 1, FP32 [1, 16384] (64 KiB each way):

- ``direct``: the device's own gRPC port;
- ``via_grpc_pool``: a gateway process with ``--pool dev=grpc://DEVICE`` (the hop for agents
  that accept inbound connections);
- ``via_mqtt_relay``: a gateway process with ``--pool edge=mqtt://BROKER`` (the relay).

Paths alternate in rotating rounds so drift hits all alike. Prints one JSON object per result;
writes bench/results/edge_relay.json.

    .venv/bin/python -m bench.edge_relay [--requests 2000] [--rounds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton

from bench._common import (
    added_latency,
    emit,
    gateway_process,
    ready_process,
    save,
    summarize,
    timed_infers,
)
from edge_agent.relay import InferRelay
from edgefabric import topics
from edgefabric.dataplane import DataPlane
from edgefabric.kserve.server import ServerOptions, start_server
from edgefabric.models.repository import ModelRepository
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import BrokerAddress, MqttClient, Will
from edgefabric.runtime.onnx import OnnxRuntime, OrtOptions
from edgefabric.samples import identity_model, write_model
from edgefabric.wire.v1.fleet_pb2 import DeviceStatus, Health, SlotReport

MODEL = "identity_fp32"
SHAPE = (1, 16384)  # 64 KiB of FP32
DEVICE = "bench-device"
PATHS = ("direct", "via_grpc_pool", "via_mqtt_relay")


async def serve_device(broker: str, repository: Path) -> None:
    """Serve ``repository`` over gRPC and the relay until SIGTERM; prints the gRPC address."""
    repo = ModelRepository(repository, OnnxRuntime(OrtOptions(intra_op_threads=1)))
    await repo.load_all()
    data = DataPlane(repo)
    server = await start_server(data, ServerOptions(port=0))
    offline = DeviceStatus(device_id=DEVICE, online=False)
    mqtt = MqttClient(
        BrokerAddress.parse(broker),
        DEVICE,
        will=Will(topics.device_status(DEVICE), offline.SerializeToString()),
    )
    await asyncio.to_thread(mqtt.connect, 10.0)
    relay = InferRelay(data, DEVICE, max_in_flight=8)
    await relay.attach(mqtt)
    status = DeviceStatus(device_id=DEVICE, online=True, grpc_endpoint=f"127.0.0.1:{server.port}")
    mqtt.publish(topics.device_status(DEVICE), status.SerializeToString(), retain=True, wait=True)
    slot = SlotReport(model=MODEL, version=1, state="READY", active=True)
    health = Health(device_id=DEVICE, slots=[slot]).SerializeToString()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(f"device listening on 127.0.0.1:{server.port}", flush=True)
    while not stop.is_set():
        mqtt.publish(topics.device_health(DEVICE), health, qos=0)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    await relay.stop()
    await asyncio.to_thread(mqtt.close)
    await server.stop(1.0)
    repo.close()


@contextmanager
def device_process(broker: str, repository: Path) -> Iterator[str]:
    """Run :func:`serve_device` in its own process; yields its gRPC host:port."""
    command = [sys.executable, "-m", "bench.edge_relay", "--device-on", broker, str(repository)]
    with ready_process(command, "device") as (address, _):
        yield address


def ready(client: triton.InferenceServerClient, timeout_s: float = 30.0) -> None:
    """Wait until the gateway has learnt the device's model (health arrives every second)."""
    deadline = time.monotonic() + timeout_s
    while not client.is_model_ready(MODEL):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{MODEL} did not become ready through the gateway")
        time.sleep(0.1)  # a benchmark's setup, not a test: polling the public API is fine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per path, over all rounds")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--device-on", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device_on:
        asyncio.run(serve_device(args.device_on[0], Path(args.device_on[1])))
        return

    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    tensor = triton.InferInput("input", list(SHAPE), "FP32")
    tensor.set_data_from_numpy(x)
    per_round = args.requests // args.rounds
    latencies: dict[str, list[float]] = {name: [] for name in PATHS}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        root = Path(tmp)
        write_model(root / "device", MODEL, identity_model("FP32"))
        (root / "empty").mkdir()
        broker = stack.enter_context(PrivateBroker(root / "mosquitto"))
        device = stack.enter_context(device_process(broker.url, root / "device"))
        via_grpc, _ = stack.enter_context(
            gateway_process(root / "empty", "--pool", f"dev=grpc://{device}")
        )
        via_mqtt, _ = stack.enter_context(
            gateway_process(root / "empty", "--pool", f"edge={broker.url}")
        )
        addresses = {"direct": device, "via_grpc_pool": via_grpc, "via_mqtt_relay": via_mqtt}
        clients = {
            name: stack.enter_context(triton.InferenceServerClient(address))
            for name, address in addresses.items()
        }
        for client in clients.values():
            ready(client)
            if not np.array_equal(client.infer(MODEL, [tensor]).as_numpy("output"), x):
                raise RuntimeError("a hop changed the answer")
            timed_infers(client, MODEL, [tensor], args.warmup)
        for round_index in range(args.rounds):  # rotate the order so drift hits every path
            shift = round_index % len(PATHS)
            for name in PATHS[shift:] + PATHS[:shift]:
                latencies[name] += timed_infers(clients[name], MODEL, [tensor], per_round)

    results: list[dict[str, Any]] = []
    emit(
        {
            "bench": "edge_relay",
            "what": (
                "added latency of the MQTT relay hop: tritonclient.grpc closed loop at "
                "concurrency 1, FP32 [1,16384] (64 KiB each way) on identity_fp32. The device is "
                "a process with an agent's DataPlane, gRPC server and InferRelay on a private "
                "mosquitto (QoS 1 both ways); the gateways are edgefabric gateway processes with "
                "an empty local repository and one pool each. Paths alternate in rotating rounds."
            ),
            "command": "python -m bench.edge_relay " + " ".join(sys.argv[1:]),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
        results,
    )
    summaries = {name: summarize(values) for name, values in latencies.items()}
    for name, summary in summaries.items():
        emit({"bench": "edge_relay", "target": name, **summary}, results)
    for path, base in (
        ("via_mqtt_relay", "direct"),
        ("via_grpc_pool", "direct"),
        ("via_mqtt_relay", "via_grpc_pool"),
    ):
        emit(
            {
                "bench": "edge_relay",
                "comparison": f"{path}_vs_{base}",
                **added_latency(summaries[path], summaries[base]),
                "p50_ratio": round(summaries[path]["p50_ms"] / summaries[base]["p50_ms"], 2),
            },
            results,
        )
    print(f"# written to {save('edge_relay', results)}")


if __name__ == "__main__":
    main()
