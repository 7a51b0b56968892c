"""``edgefabric up``: a local fabric in the foreground, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton

pytestmark = pytest.mark.e2e


def _read_until(process: subprocess.Popen[str], *markers: str) -> list[str]:
    """Lines up to the first one holding every marker (the process prints as it goes)."""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if all(marker in line for marker in markers):
            return lines
    raise AssertionError(f"{markers!r} never printed on one line; output so far: {lines}")


def test_up_runs_the_fabric_until_interrupted(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "edgefabric.cli", "--log-level", "WARNING", "up",
         "--agents", "2", "--work-dir", str(tmp_path / "fabric")],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        started = _read_until(process, "devices: ")
        gateway = next(line for line in started if line.startswith("gateway"))
        assert "rollout of mlp:1 to the agents: COMPLETED" in started
        assert "device-1 mlp:1" in started[-1]
        assert "device-2 mlp:1" in started[-1]
        address = gateway.split()[1]
        with triton.InferenceServerClient(address) as client:
            pools = set()
            for _ in range(40):
                tensor = triton.InferInput("x", [1, 16], "FP32")
                tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
                answer = client.infer("mlp", [tensor], client_timeout=10).get_response()
                pools.add(answer.parameters["edgefabric.pool"].string_param)
            assert pools == {"local", "edge"}
        # the status view adds what the gateway reports routing, per model and pool (its
        # reports arrive every 2 s, so the first ones may hold only one of the pools)
        routed = _read_until(process, "routed:", "mlp · edge", "mlp · local")[-1]
        assert routed.startswith("routed:"), routed
        dashboard = next(line for line in started if line.startswith("dashboard"))
        assert dashboard.split()[1].startswith("http://127.0.0.1:")
        process.send_signal(signal.SIGINT)
        rest = _read_until(process, "stopped: ")
        assert rest[-1] == "stopped: gateway 0, device-1 0, device-2 0"
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
