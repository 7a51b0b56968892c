"""Attacks on model distribution, each named after what the attacker tries.

A real ``tuf.ngclient.Updater`` fetches from :class:`RepositorySimulator`, which serves the
store's real repository; each test swaps in what an attacker would serve and checks that the
client raises the right error and accepted nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]
from tuf.api.exceptions import (
    BadVersionNumberError,
    DownloadLengthMismatchError,
    ExpiredMetadataError,
    LengthOrHashMismatchError,
    UnsignedMetadataError,
)
from tuf.api.metadata import Metadata, MetaFile  # type: ignore[attr-defined]
from tuf.api.serialization.json import JSONSerializer

from model_store.tuf_repo import ExpiryPolicy, TargetSpec
from tests.tuf_simulator import Client, RepositorySimulator

pytestmark = pytest.mark.unit

MODEL_V1 = b"\x08\x09onnx model one " * 64
MODEL_V2 = b"\x08\x09onnx model two " * 80


@pytest.fixture
def sim(tmp_path: Path) -> RepositorySimulator:
    return RepositorySimulator.create(tmp_path / "repository")


@pytest.fixture
def client(sim: RepositorySimulator, tmp_path: Path) -> Client:
    return Client(sim, tmp_path / "agent", sim.repo.trusted_root())


def _model_v1(sim: RepositorySimulator) -> TargetSpec:
    return sim.target("models/mlp/1/model.onnx", MODEL_V1, name="mlp", version=1, opset=17)


def _model_v2(sim: RepositorySimulator) -> TargetSpec:
    return sim.target("models/mlp/2/model.onnx", MODEL_V2, name="mlp", version=2, opset=17)


def _publish_twice(sim: RepositorySimulator) -> tuple[TargetSpec, TargetSpec]:
    """Targets, snapshot and timestamp end at version 3 (create wrote 1)."""
    first, second = _model_v1(sim), _model_v2(sim)
    sim.publish([first])
    sim.publish([first, second])
    return first, second


def _next_version_with(**fields: Any) -> Callable[[Any], None]:
    def change(signed: Any) -> None:
        signed.version += 1
        for name, value in fields.items():
            setattr(signed, name, value)

    return change


def test_new_timestamp_version_rollback(sim: RepositorySimulator, client: Client) -> None:
    sim.publish([_model_v1(sim)])
    old_timestamp = sim.metadata("timestamp.json")
    sim.publish([_model_v1(sim), _model_v2(sim)])
    client.updater().refresh()
    assert client.cached_version("timestamp") == 3

    sim.serve("timestamp.json", old_timestamp)
    with pytest.raises(BadVersionNumberError, match="timestamp version"):
        client.updater().refresh()
    assert client.cached_version("timestamp") == 3


def test_new_snapshot_version_rollback(sim: RepositorySimulator, client: Client) -> None:
    _publish_twice(sim)
    client.updater().refresh()
    # The attacker holds the timestamp key and points a newer timestamp at snapshot v2.
    old_snapshot = MetaFile.from_data(2, sim.metadata("2.snapshot.json"), ["sha256"])
    forged = sim.forge(
        sim.metadata("timestamp.json"),
        sim.keyring.signers("timestamp"),
        _next_version_with(snapshot_meta=old_snapshot),
    )
    sim.serve("timestamp.json", forged)
    with pytest.raises(BadVersionNumberError, match="snapshot version"):
        client.updater().refresh()
    assert client.cached_version("timestamp") == 3
    assert client.cached_version("snapshot") == 3


def test_new_targets_version_rollback(sim: RepositorySimulator, client: Client) -> None:
    _publish_twice(sim)
    client.updater().refresh()
    # The attacker holds the snapshot and timestamp keys and brings back targets v2.
    old_targets = MetaFile.from_data(2, sim.metadata("2.targets.json"), ["sha256"])
    snapshot = sim.forge(
        sim.metadata("3.snapshot.json"),
        sim.keyring.signers("snapshot"),
        _next_version_with(meta={"targets.json": old_targets}),
    )
    sim.serve("4.snapshot.json", snapshot)
    timestamp = sim.forge(
        sim.metadata("timestamp.json"),
        sim.keyring.signers("timestamp"),
        _next_version_with(snapshot_meta=MetaFile.from_data(4, snapshot, ["sha256"])),
    )
    sim.serve("timestamp.json", timestamp)
    with pytest.raises(BadVersionNumberError, match=r"targets\.json version"):
        client.updater().refresh()
    assert client.cached_version("snapshot") == 3
    assert client.cached_version("targets") == 3


def test_expired_timestamp_freeze_attack(tmp_path: Path) -> None:
    # A mirror keeps replaying metadata signed ten days ago: its timestamp (1 day) has expired.
    ten_days_ago = datetime.now(UTC) - timedelta(days=10)
    sim = RepositorySimulator.create(tmp_path / "repository", clock=lambda: ten_days_ago)
    spec = _model_v1(sim)
    sim.publish([spec])
    client = Client(sim, tmp_path / "agent", sim.repo.trusted_root())
    updater = client.updater()
    with pytest.raises(ExpiredMetadataError, match="timestamp"):
        updater.get_targetinfo(spec.path)
    assert client.cached_version("timestamp") is None
    assert client.downloaded() == []


def test_expired_targets_freeze_attack(tmp_path: Path) -> None:
    # Timestamp and snapshot are fresh, but the targets they name expired a day ago.
    two_days_ago = datetime.now(UTC) - timedelta(days=2)
    expiry = ExpiryPolicy(
        targets=timedelta(days=1), snapshot=timedelta(days=30), timestamp=timedelta(days=30)
    )
    sim = RepositorySimulator.create(
        tmp_path / "repository", clock=lambda: two_days_ago, expiry=expiry
    )
    spec = _model_v1(sim)
    sim.publish([spec])
    client = Client(sim, tmp_path / "agent", sim.repo.trusted_root())
    updater = client.updater()
    with pytest.raises(ExpiredMetadataError, match="targets"):
        updater.get_targetinfo(spec.path)
    assert client.cached_version("targets") is None
    assert client.downloaded() == []


def test_target_with_altered_bytes(sim: RepositorySimulator, client: Client) -> None:
    spec = _model_v1(sim)
    sim.publish([spec])
    tampered = bytearray(MODEL_V1)
    tampered[100] ^= 0xFF
    sim.serve_target(spec, bytes(tampered))
    updater = client.updater()
    info = updater.get_targetinfo(spec.path)
    assert info is not None
    with pytest.raises(LengthOrHashMismatchError):
        updater.download_target(info)
    assert client.downloaded() == []


def test_endless_data_target(sim: RepositorySimulator, client: Client) -> None:
    spec = _model_v1(sim)
    sim.publish([spec])
    sim.serve_target(spec, MODEL_V1 + b"\0" * (1 << 20))
    updater = client.updater()
    info = updater.get_targetinfo(spec.path)
    assert info is not None
    with pytest.raises(DownloadLengthMismatchError):
        updater.download_target(info)
    assert client.downloaded() == []


def test_endless_data_timestamp(sim: RepositorySimulator, client: Client) -> None:
    sim.publish([_model_v1(sim)])
    sim.serve("timestamp.json", sim.metadata("timestamp.json") + b" " * (1 << 20))
    with pytest.raises(DownloadLengthMismatchError):
        client.updater().refresh()
    assert client.cached_version("timestamp") is None


def test_metadata_signed_by_wrong_key(sim: RepositorySimulator, client: Client) -> None:
    sim.publish([_model_v1(sim)])
    client.updater().refresh()
    intruder = CryptoSigner.generate_ed25519()
    forged = sim.forge(sim.metadata("timestamp.json"), [intruder], _next_version_with())
    sim.serve("timestamp.json", forged)
    with pytest.raises(UnsignedMetadataError):
        client.updater().refresh()
    assert client.cached_version("timestamp") == 2


def test_metadata_below_signature_threshold(tmp_path: Path) -> None:
    sim = RepositorySimulator.create(tmp_path / "repository", thresholds={"timestamp": 2})
    sim.publish([_model_v1(sim)])
    client = Client(sim, tmp_path / "agent", sim.repo.trusted_root())
    client.updater().refresh()  # both timestamp keys signed: accepted
    assert client.cached_version("timestamp") == 2

    one_of_two = sim.keyring.signers("timestamp")[:1]
    forged = sim.forge(sim.metadata("timestamp.json"), one_of_two, _next_version_with())
    sim.serve("timestamp.json", forged)
    with pytest.raises(UnsignedMetadataError):
        client.updater().refresh()
    assert client.cached_version("timestamp") == 2


@pytest.mark.parametrize("forgery", ["older version", "re-signed content"])
def test_mix_and_match_snapshot_and_targets(
    sim: RepositorySimulator, client: Client, forgery: str
) -> None:
    _publish_twice(sim)
    if forgery == "older version":
        served = sim.metadata("2.targets.json")
    else:
        # The attacker holds the targets key, not the snapshot key: v3, same length, other
        # contract, so only the hash snapshot records can tell.
        def change(signed: Any) -> None:
            signed.targets["models/mlp/2/model.onnx"].unrecognized_fields["custom"]["opset"] = 18

        served = sim.forge(sim.metadata("3.targets.json"), sim.keyring.signers("targets"), change)
        assert len(served) == len(sim.metadata("3.targets.json"))
    sim.serve("3.targets.json", served)
    with pytest.raises(LengthOrHashMismatchError):
        client.updater().refresh()
    assert client.cached_version("targets") is None


def test_root_rotation_accepted(sim: RepositorySimulator, client: Client) -> None:
    spec = _model_v1(sim)
    sim.publish([spec])
    assert [sim.repo.rotate(role) for role in ("root", "targets", "snapshot", "timestamp")] == [
        2,
        3,
        4,
        5,
    ]
    sim.sync()
    updater = client.updater()
    info = updater.get_targetinfo(spec.path)
    assert info is not None
    assert info.custom == {"name": "mlp", "version": 1, "opset": 17}
    assert Path(updater.download_target(info)).read_bytes() == MODEL_V1
    assert client.trusted_root_versions() == [1, 2, 3, 4, 5]


def _strip_signatures(data: bytes, keyids: set[str]) -> bytes:
    metadata: Metadata[Any] = Metadata.from_bytes(data)
    for keyid in keyids:
        del metadata.signatures[keyid]
    stripped: bytes = metadata.to_bytes(JSONSerializer(compact=False))
    return stripped


def test_root_rotation_signed_only_by_new_key_rejected(
    sim: RepositorySimulator, client: Client
) -> None:
    old_root_keys = {key.keyid for key in sim.keyring.public_keys("root")}
    sim.publish([_model_v1(sim)])
    sim.repo.rotate("root")
    sim.sync()
    sim.serve("2.root.json", _strip_signatures(sim.metadata("2.root.json"), old_root_keys))
    with pytest.raises(UnsignedMetadataError):
        client.updater().refresh()
    assert client.trusted_root_versions() == [1]
    assert client.cached_version("timestamp") is None


def test_root_rotation_signed_only_by_old_key_rejected(
    sim: RepositorySimulator, client: Client
) -> None:
    sim.publish([_model_v1(sim)])
    sim.repo.rotate("root")
    new_root_keys = {key.keyid for key in sim.keyring.public_keys("root")}
    sim.sync()
    sim.serve("2.root.json", _strip_signatures(sim.metadata("2.root.json"), new_root_keys))
    with pytest.raises(UnsignedMetadataError):
        client.updater().refresh()
    assert client.trusted_root_versions() == [1]
