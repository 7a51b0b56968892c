"""``edgefabric store serve`` answering a real TUF client (ngclient) over a real mosquitto.

The device side is the edge agent's sync: MQTT fetcher + ngclient Updater. Covers the happy
path, resuming after a crash and after a broker restart without re-fetching bytes on disk,
tampered artifacts, a foreign trust root, unknown versions and an unreachable store.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from edge_agent.fetcher import MqttFetcher
from edge_agent.sync import ModelSync
from edgefabric.errors import IntegrityError, ModelNotFoundError, TransportError
from edgefabric.mosquitto import PrivateBroker
from edgefabric.mqtt import MqttClient
from edgefabric.repo_client import RepoClient
from edgefabric.samples import mlp_model
from tests.cli import run_edgefabric
from tests.mqtt_broker import ConnectMqtt

pytestmark = pytest.mark.integration

CHUNK = 64 * 1024


@dataclass
class Store:
    home: Path
    model: bytes
    process: subprocess.Popen[str] | None = None

    @property
    def trust_root(self) -> bytes:
        return (self.home / "tuf" / "metadata" / "root.json").read_bytes()

    def serve(self, broker: PrivateBroker) -> None:
        env = {**os.environ, "EDGEFABRIC_HOME": str(self.home)}
        command = [sys.executable, "-m", "edgefabric.cli", "store", "serve"]
        self.process = subprocess.Popen(
            [*command, "--broker", broker.url, "--chunk-size", str(CHUNK)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.startswith("edgefabric store serving the repository on"), line

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            assert self.process.wait(timeout=30) == 0
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.process = None


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store with mlp:1 (about 1 MiB, with golden vectors)."""
    home = tmp_path / "store"
    model = mlp_model(features=256, hidden=1024).SerializeToString()
    (tmp_path / "mlp.onnx").write_bytes(model)
    np.savez(tmp_path / "golden.npz", x=np.ones((2, 256), np.float32))
    run_edgefabric(home, "keys", "init")
    run_edgefabric(
        home, "model", "push", str(tmp_path / "mlp.onnx"), "--name", "mlp",
        "--golden", str(tmp_path / "golden.npz"),
    )  # fmt: skip
    running = Store(home, model)
    yield running
    running.stop()


@dataclass
class Device:
    mqtt: MqttClient
    data: Path
    trust_root: bytes
    chunks: list[tuple[str, int]] = field(default_factory=list)
    crash_after: int | None = None
    on_chunk: Callable[[int], None] | None = None

    def sync(self) -> ModelSync:
        def observe(path: str, offset: int, size: int) -> None:
            self.chunks.append((path, offset))
            if self.on_chunk is not None:
                self.on_chunk(len(self.chunks))
            if self.crash_after is not None and len(self.chunks) >= self.crash_after:
                raise KeyboardInterrupt("simulated crash mid-download")

        fetcher = MqttFetcher(
            RepoClient(self.mqtt, "dev-1", timeout_s=10), self.data / "partial", on_chunk=observe
        )
        return ModelSync(self.data / "metadata", self.trust_root, fetcher, self.data / "download")

    def target_offsets(self) -> list[int]:
        return [offset for path, offset in self.chunks if path.endswith(".model.onnx")]


@pytest.fixture
def device(
    store: Store, mqtt_broker: PrivateBroker, connect_mqtt: ConnectMqtt, tmp_path: Path
) -> Iterator[Device]:
    """A device's sync, with the store serving on a private broker (stopped before it)."""
    store.serve(mqtt_broker)
    yield Device(connect_mqtt(mqtt_broker, "dev-1"), tmp_path / "device", store.trust_root)
    store.stop()


def test_a_device_downloads_a_verified_model_and_its_golden_vectors(
    device: Device, store: Store
) -> None:
    downloaded = device.sync().fetch("mlp", 1)
    assert downloaded.model.read_bytes() == store.model
    assert downloaded.golden is not None
    assert downloaded.custom["name"] == "mlp"
    assert downloaded.custom["contract"]["inputs"][0]["shape"] == [None, 256]
    offsets = device.target_offsets()
    assert len(offsets) > 10  # really chunked
    assert offsets[:3] == [0, CHUNK, 2 * CHUNK]


def test_a_crash_mid_download_resumes_without_refetching(device: Device, store: Store) -> None:
    device.crash_after = 6  # metadata chunks plus a few target chunks
    with pytest.raises(KeyboardInterrupt):
        device.sync().fetch("mlp", 1)
    done = device.target_offsets()
    assert done
    device.chunks.clear()
    device.crash_after = None
    downloaded = device.sync().fetch("mlp", 1)  # a fresh sync: as after an agent restart
    assert downloaded.model.read_bytes() == store.model
    assert device.target_offsets()[0] == done[-1] + CHUNK
    assert not list((device.data / "partial").iterdir())


def test_a_kept_partial_longer_than_the_file_is_discarded_and_fetched_from_zero(
    device: Device, store: Store
) -> None:
    partial = device.data / "partial" / f"{hashlib.sha256(store.model).hexdigest()}.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(store.model + b"left over from a damaged disk")
    downloaded = device.sync().fetch("mlp", 1)  # the store answers BAD_REQUEST for that offset
    assert downloaded.model.read_bytes() == store.model
    assert device.target_offsets()[0] == 0
    assert not list((device.data / "partial").iterdir())


def test_a_broker_restart_mid_download_resumes(
    device: Device, store: Store, mqtt_broker: PrivateBroker
) -> None:
    def restart_once(count: int) -> None:
        if count == 6:
            mqtt_broker.restart()

    device.on_chunk = restart_once
    downloaded = device.sync().fetch("mlp", 1)
    assert downloaded.model.read_bytes() == store.model
    offsets = device.target_offsets()
    assert offsets == sorted(set(offsets))  # nothing fetched twice


def test_tampered_model_bytes_are_refused_and_nothing_is_kept(device: Device, store: Store) -> None:
    digest = hashlib.sha256(store.model).hexdigest()
    blob = store.home / "blobs" / "sha256" / digest[:2] / digest
    os.chmod(blob, 0o644)
    blob.write_bytes(store.model[:-4] + b"evil")
    with pytest.raises(IntegrityError, match=r"refused models/mlp/1/model\.onnx"):
        device.sync().fetch("mlp", 1)
    assert not list((device.data / "download").iterdir())
    assert not list((device.data / "partial").iterdir())


def test_metadata_from_a_foreign_store_is_refused(device: Device, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run_edgefabric(other, "keys", "init")
    device.trust_root = (other / "tuf" / "metadata" / "root.json").read_bytes()
    with pytest.raises(IntegrityError, match="refused the store's metadata"):
        device.sync().fetch("mlp", 1)
    assert not list((device.data / "download").iterdir())


def test_an_unsigned_version_is_not_found(device: Device) -> None:
    with pytest.raises(ModelNotFoundError, match="mlp:7 is not a signed target"):
        device.sync().fetch("mlp", 7)


def test_an_unreachable_store_is_a_transport_error(device: Device, store: Store) -> None:
    store.stop()
    sync = device.sync()
    sync._fetcher._client = RepoClient(device.mqtt, "dev-1", timeout_s=0.5, attempts=1)
    with pytest.raises(TransportError, match="could not refresh metadata"):
        sync.fetch("mlp", 1)
    assert sync.metadata_age_s() is None
