"""``make demo``: run the fabric locally and call it as an application would.

1. The gateway: writes a Triton-layout repository of generated ONNX models, starts
   ``edgefabric gateway serve`` on a free loopback port, calls it with the real ``tritonclient``
   (metadata, inference, BYTES, output subsets, streaming, statistics, a bad request) and stops
   it with SIGTERM.
2. The fabric (``deploy/fabric_demo.py``, what ``edgefabric up`` runs): a signed model store,
   a private mosquitto, the rollout controller, edge agents that fetch, verify, self-test and
   serve the model, a gateway routing to its own session and to the agents over MQTT, two
   staged rollouts and requests through the gateway after each.
"""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from deploy.fabric_demo import run_fabric_demo
from edgefabric.samples import write_sample_repository


def start_gateway(repository: Path) -> tuple[subprocess.Popen[str], str]:
    """Start the gateway process; returns it and its host:port."""
    command = [
        sys.executable, "-m", "edgefabric.cli", "--log-level", "WARNING", "gateway", "serve",
        "--model-repository", str(repository), "--grpc-port", "0", "--metrics-port", "0",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise SystemExit(f"gateway failed to start: {line!r}")
    print(f"[demo] {line.strip()}")
    return process, line.rsplit(" ", 1)[1].strip()


def call_gateway(address: str) -> None:
    """What an application does with tritonclient."""
    with triton.InferenceServerClient(address) as client:
        meta = client.get_server_metadata()
        print(f"[demo] server {meta.name} {meta.version}, ready={client.is_server_ready()}")
        models = [(m.name, m.version, m.state) for m in client.get_model_repository_index().models]
        print(f"[demo] models: {models}")

        x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
        tensor = triton.InferInput("x", [4, 16], "FP32")
        tensor.set_data_from_numpy(x)
        logits = client.infer("mlp", [tensor], priority=1, client_timeout=10).as_numpy("logits")
        print(f"[demo] mlp: 4 rows -> predicted classes {logits.argmax(axis=1).tolist()}")

        words = triton.InferInput("text", [2], "BYTES")
        words.set_data_from_numpy(np.array([b"edge", b"fabric"], dtype=np.object_))
        upper = client.infer("text", [words], outputs=[triton.InferRequestedOutput("upper")])
        print(f"[demo] text: {upper.as_numpy('upper').tolist()}")

        image = triton.InferInput("image", [2, 3, 32, 32], "FP32")
        image.set_data_from_numpy(np.ones((2, 3, 32, 32), np.float32))
        scores = client.infer("cnn", [image]).as_numpy("scores")
        print(f"[demo] cnn: scores shape {scores.shape}")

        answers: queue.Queue[object] = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put(error or result))
        for index in range(3):
            client.async_stream_infer("mlp", [tensor], request_id=f"stream-{index}")
        streamed = [answers.get(timeout=30) for _ in range(3)]
        client.stop_stream()
        print(f"[demo] stream: {len(streamed)} answers")

        bad = triton.InferInput("x", [1, 3], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
        try:
            client.infer("mlp", [bad])
        except InferenceServerException as exc:
            print(f"[demo] a bad request is refused clearly: {exc.status()} {exc.message()}")

        stats = client.get_inference_statistics("mlp").model_stats[0]
        print(
            f"[demo] mlp statistics: {stats.inference_stats.success.count} ok, "
            f"{stats.inference_stats.fail.count} failed, {stats.inference_count} rows"
        )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="edgefabric-demo-") as tmp:
        repository = write_sample_repository(Path(tmp) / "models")
        process, address = start_gateway(repository)
        try:
            call_gateway(address)
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(timeout=30)
            print(f"[demo] gateway drained and exited with code {code}")
        codes = run_fabric_demo(Path(tmp) / "fabric")
        if any(codes.values()):
            print(f"[demo] a process exited uncleanly: {codes}")
            return 1
        print("[demo] fabric stopped cleanly")
    return code


if __name__ == "__main__":
    sys.exit(main())
