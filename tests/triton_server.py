"""A real Triton Inference Server for the tests: the ``tritonserver`` of the ``nvidia-pytriton``
wheel, CPU only, its Python backend running the ONNX model with ONNX Runtime.

The server lives in ``bench/.peers/triton-venv`` (``make triton-peer``, which ``make test``
runs) and is started by :mod:`bench.peers.launch` on a port the kernel picks; the fixture
returns once the server answers ``ModelReady``. A missing venv fails the tests with the install
hint rather than skipping them.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.peers.launch import TRITON_VENV, Peer, PeerError, start_triton
from edgefabric.samples import mlp_model, write_model

__all__ = ["TritonServer", "kill_triton", "start_triton_server", "triton_mlp"]

READY_TIMEOUT_S = 60.0


@dataclass
class TritonServer:
    """A running tritonserver and the ONNX file it serves."""

    peer: Peer
    model_path: Path

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` for tritonclient and ``--pool NAME=grpc://...``."""
        return self.peer.url

    @property
    def model_name(self) -> str:
        """The name the model is served under."""
        return self.peer.model_name


def start_triton_server(
    model_path: Path, workdir: Path, *, model_name: str | None = None
) -> TritonServer:
    """Start tritonserver on ``model_path``; fails the test when the Triton venv is missing."""
    if not (TRITON_VENV / "bin" / "python").exists():
        pytest.fail(f"{TRITON_VENV} is missing: run `make triton-peer` (make test does)")
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        peer = start_triton(
            model_path,
            workdir,
            max_batch_size=64,
            max_queue_delay_us=100,
            model_name=model_name,
            intra_op_num_threads=1,
            ready_timeout_s=READY_TIMEOUT_S,
        )
    except PeerError as exc:
        pytest.fail(f"tritonserver did not start: {exc}")
    return TritonServer(peer, model_path)


def kill_triton(server: TritonServer) -> None:
    """SIGKILL the server and its Python-backend stubs (its own process group): a crash."""
    os.killpg(server.peer.process.pid, signal.SIGKILL)
    server.peer.process.wait()


@pytest.fixture(scope="module")
def triton_mlp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    """One tritonserver serving the sample ``mlp`` for a module's tests; never kill it."""
    root = tmp_path_factory.mktemp("triton")
    model_path = write_model(root / "onnx", "mlp", mlp_model())
    server = start_triton_server(model_path, root / "server")
    yield server
    server.peer.stop()
