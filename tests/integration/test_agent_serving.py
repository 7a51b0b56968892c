"""The device's KServe v2 server: install with self-test, safe failures, drain, rollback, restore.

Real ONNX Runtime sessions behind a real gRPC server on 127.0.0.1:0, called with tritonclient.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio

from edge_agent.serving import DeviceServer, SelfTestError, ServingOptions
from edge_agent.slots import ModelSlots, SlotState
from edgefabric.errors import IntegrityError, ModelLoadError
from edgefabric.golden import GoldenVectors, Tolerance, run_model_bytes
from edgefabric.models.contract import inspect_onnx
from edgefabric.runtime.base import Runtime
from edgefabric.runtime.onnx import OrtOptions
from edgefabric.samples import mlp_model, stats_model
from tests.integration.gated import GatedRuntime

pytestmark = pytest.mark.integration

T = TypeVar("T")
S = SlotState
ROWS = np.linspace(-1.0, 1.0, 3 * 16, dtype=np.float32).reshape(3, 16)
V1, V2, V3 = (mlp_model(hidden=h).SerializeToString() for h in (32, 48, 64))


class DeviceThread:
    """A device server on its own event loop in a background thread, for blocking clients."""

    def __init__(self, serving_dir: Path, runtime: Runtime | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        options = ServingOptions(ort=OrtOptions(intra_op_threads=1))
        self.server = DeviceServer(serving_dir, options, runtime)
        self.call(self.server.start)

    def call(self, factory: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(factory(*args), self.loop).result(timeout=60)

    def on_loop(self, read: Callable[[], T]) -> T:
        """``read()`` on the loop, after every callback already scheduled there."""

        async def run() -> T:
            return read()

        return self.call(run)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.call(self.server.stop, 1.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def start_device(tmp_path: Path) -> Iterator[Callable[..., DeviceThread]]:
    started: list[DeviceThread] = []

    def start(runtime: Runtime | None = None) -> DeviceThread:
        running = DeviceThread(tmp_path / "serving", runtime)
        started.append(running)
        return running

    yield start
    for running in started:
        running.close()


@pytest.fixture
def slots(tmp_path: Path) -> ModelSlots:
    return ModelSlots(tmp_path / "models", "mlp")


def golden_for(model: bytes) -> bytes:
    """Golden vectors as the store makes them: the model's own outputs for ROWS."""
    outputs = run_model_bytes(model, {"x": ROWS})
    return GoldenVectors({"x": ROWS}, outputs).to_npz()


def stage(
    slots: ModelSlots,
    version: int,
    model: bytes,
    *,
    golden: bytes | None = None,
    contract_of: bytes | None = None,
) -> None:
    """What the sync does after TUF verified the files: move them into a slot."""
    incoming = slots.folder.parent.parent / "incoming"
    incoming.mkdir(exist_ok=True)
    (incoming / "model.onnx").write_bytes(model)
    custom: dict[str, Any] = {"kind": "model", "name": "mlp", "version": version, "golden": None}
    if contract_of is not None:
        custom["contract"] = inspect_onnx(contract_of, source="test").to_json()
    golden_path = None
    if golden is not None:
        golden_path = incoming / "golden.npz"
        golden_path.write_bytes(golden)
        custom["golden"] = {
            "path": f"models/mlp/{version}/golden.npz",
            "sha256": hashlib.sha256(golden).hexdigest(),
            "length": len(golden),
            "tolerances": {"logits": Tolerance(rtol=1e-4, atol=1e-5).to_json()},
        }
    slots.install_verified(version, incoming / "model.onnx", golden_path, custom)


def install(device: DeviceThread, slots: ModelSlots, version: int, model: bytes) -> None:
    """Stage ``model`` with golden vectors and contract of its own, then install it."""
    stage(slots, version, model, golden=golden_for(model), contract_of=model)
    device.call(device.server.install, slots, version)


def infer(address: str) -> tuple[str, np.ndarray]:
    tensor = triton.InferInput("x", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    with triton.InferenceServerClient(address) as client:
        result = client.infer("mlp", [tensor])
    return str(result.get_response().model_version), result.as_numpy("logits")


def in_process(model: bytes) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {"x": ROWS})[0])


def test_install_serves_the_version_and_keeps_the_old_one_on_disk(start_device, slots):
    device = start_device()
    install(device, slots, 1, V1)
    assert device.server.served() == {"mlp": 1}
    version, logits = infer(device.address)
    assert version == "1"
    np.testing.assert_allclose(logits, in_process(V1), rtol=1e-6)
    assert device.server.execution_provider in ort.get_available_providers()

    install(device, slots, 2, V2)
    assert device.server.served() == {"mlp": 2}
    version, logits = infer(device.address)
    assert version == "2"
    np.testing.assert_allclose(logits, in_process(V2), rtol=1e-6)
    with triton.InferenceServerClient(device.address) as client:
        assert client.get_model_metadata("mlp").versions == ["2"]
    assert slots.active == 2
    assert slots.previous == [1]
    assert device.on_loop(lambda: slots.versions) == {1: S.UNLOADED, 2: S.READY}
    assert slots.model_path(1).is_file()


def test_golden_mismatch_fails_the_self_test_and_the_old_version_keeps_serving(
    start_device, slots, tmp_path
):
    device = start_device()
    install(device, slots, 2, V2)
    stage(slots, 3, V3, golden=golden_for(V2), contract_of=V3)  # expects another model's outputs
    with pytest.raises(SelfTestError) as failure:
        device.call(device.server.install, slots, 3)
    message = str(failure.value)
    assert "'mlp' version 3 failed its self-test; version 2 keeps serving" in message
    assert "output 'logits'" in message
    assert "max |diff|" in message
    assert slots.state(3) is S.FAILED
    assert "output 'logits'" in slots.reason(3)
    assert device.server.served() == {"mlp": 2}
    assert infer(device.address)[0] == "2"
    assert slots.active == 2
    assert not (tmp_path / "serving" / "mlp" / "3").exists()


def test_contract_mismatch_fails_the_self_test(start_device, slots):
    device = start_device()
    install(device, slots, 1, V1)
    stage(slots, 2, stats_model().SerializeToString(), contract_of=V1)
    with pytest.raises(SelfTestError, match="inputs are x FP32 \\[\\?,8\\], the signed contract"):
        device.call(device.server.install, slots, 2)
    assert slots.state(2) is S.FAILED
    assert infer(device.address)[0] == "1"


def test_a_model_that_does_not_load_is_failed_and_the_old_one_keeps_serving(start_device, slots):
    device = start_device()
    install(device, slots, 1, V1)
    stage(slots, 2, b"\x08\x07 certainly not an ONNX graph")
    with pytest.raises(ModelLoadError) as failure:
        device.call(device.server.install, slots, 2)
    assert not isinstance(failure.value, SelfTestError)
    assert "'mlp' version 2 did not load; version 1 keeps serving" in str(failure.value)
    assert slots.state(2) is S.FAILED
    assert infer(device.address)[0] == "1"


def test_files_changed_on_disk_are_refused(start_device, slots):
    device = start_device()
    install(device, slots, 1, V1)
    stage(slots, 2, V2, golden=golden_for(V2))
    slots.model_path(2).write_bytes(V3)
    with pytest.raises(IntegrityError, match=r"changed on disk.*version 1 keeps serving"):
        device.call(device.server.install, slots, 2)
    assert slots.state(2) is S.FAILED
    assert infer(device.address)[0] == "1"


async def _infer_async(address: str) -> str:
    tensor = triton_aio.InferInput("x", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS)
    async with triton_aio.InferenceServerClient(address) as client:
        result = await client.infer("mlp", [tensor])
    return str(result.get_response().model_version)


def test_a_request_in_flight_across_the_switch_completes_on_the_old_version(start_device, slots):
    runtime = GatedRuntime()
    device = start_device(runtime)
    stage(slots, 1, V1, contract_of=V1)  # no golden vectors: the gate would hold the self-test
    device.call(device.server.install, slots, 1)
    held = asyncio.run_coroutine_threadsafe(_infer_async(device.address), device.loop)
    runtime.gate.wait_entered()

    stage(slots, 2, V2, contract_of=V2)
    device.call(device.server.install, slots, 2)
    assert device.server.served() == {"mlp": 2}
    assert device.on_loop(lambda: slots.state(1)) is S.DRAINING
    old = runtime.loaded[("mlp", 1)]
    assert not old.closed

    runtime.gate.opened.set()
    assert held.result(timeout=30) == "1"
    assert device.on_loop(lambda: slots.state(1)) is S.UNLOADED
    assert old.closed
    assert infer(device.address)[0] == "2"


def test_rollback_serves_the_previous_version(start_device, slots):
    device = start_device()
    install(device, slots, 1, V1)
    install(device, slots, 2, V2)
    assert device.call(device.server.rollback, slots) == 1
    assert device.server.served() == {"mlp": 1}
    version, logits = infer(device.address)
    assert version == "1"
    np.testing.assert_allclose(logits, in_process(V1), rtol=1e-6)
    assert (slots.active, slots.previous) == (1, [2])
    assert device.on_loop(lambda: slots.versions) == {1: S.READY, 2: S.UNLOADED}

    slots.set_state(2, S.FAILED, "p99 latency gate")
    assert device.call(device.server.rollback, slots) is None
    assert device.server.served() == {"mlp": 1}


def test_rollback_refuses_a_previous_version_changed_on_disk(start_device, slots):
    device = start_device()
    install(device, slots, 1, V1)
    install(device, slots, 2, V2)
    slots.model_path(1).write_bytes(V3)
    assert device.call(device.server.rollback, slots) is None
    assert slots.state(1) is S.FAILED
    assert "changed on disk" in slots.reason(1)
    assert infer(device.address)[0] == "2"


def test_restore_after_a_restart_serves_the_active_version(start_device, slots, tmp_path):
    first = start_device()
    install(first, slots, 1, V1)
    install(first, slots, 2, V2)
    first.close()

    found = ModelSlots.discover(tmp_path / "models", keep_previous=2)
    second = start_device()
    second.call(second.server.restore, found)
    assert second.server.served() == {"mlp": 2}
    version, logits = infer(second.address)
    assert version == "2"
    np.testing.assert_allclose(logits, in_process(V2), rtol=1e-6)
    assert found["mlp"].versions == {1: S.UNLOADED, 2: S.READY}


def test_restore_with_lost_state_self_tests_the_newest_verified_version(
    start_device, slots, tmp_path
):
    first = start_device()
    install(first, slots, 1, V1)
    install(first, slots, 2, V2)
    first.close()
    (slots.folder / "state.json").write_text("{")

    found = ModelSlots.discover(tmp_path / "models", keep_previous=2)
    second = start_device()
    second.call(second.server.restore, found)
    assert second.server.served() == {"mlp": 2}
    assert found["mlp"].active == 2
    assert found["mlp"].state(2) is S.READY
