"""The store's keyring and TUF repository on disk: layout, signing, expiry, rotation, checks."""

from __future__ import annotations

import hashlib
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, TargetFile, Timestamp  # type: ignore[attr-defined]

from edgefabric.errors import ConflictError, IntegrityError, SigningKeyError, StoreError
from model_store.keys import ROLES, Keyring
from model_store.tuf_repo import TargetSpec, TufRepository

pytestmark = pytest.mark.unit

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    """A settable clock for the repository."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def _spec(path: str, data: bytes, **custom: Any) -> TargetSpec:
    return TargetSpec(path, len(data), hashlib.sha256(data).hexdigest(), custom)


MODEL = _spec(
    "models/mlp/3/model.onnx",
    b"onnx bytes",
    name="mlp",
    version=3,
    stage="production",
    signature={"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]},
    golden={"path": "models/mlp/3/golden.npz", "tolerances": {"y": {"atol": "1e-05"}}},
)
GOLDEN = _spec("models/mlp/3/golden.npz", b"npz bytes", kind="golden")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    return Keyring.create(tmp_path / "keys")


@pytest.fixture
def repo(tmp_path: Path, keyring: Keyring, clock: Clock) -> TufRepository:
    return TufRepository.create(tmp_path / "store", keyring, clock=clock)


def _version(repo: TufRepository, name: str) -> int:
    data = repo.read_metadata(name)
    assert data is not None
    version: int = Metadata.from_bytes(data).signed.version
    return version


def _snapshot_version(repo: TufRepository) -> int:
    data = repo.read_metadata("timestamp.json")
    assert data is not None
    version: int = Metadata[Timestamp].from_bytes(data).signed.snapshot_meta.version
    return version


def _signers_of(repo: TufRepository, name: str) -> set[str]:
    data = repo.read_metadata(name)
    assert data is not None
    return set(Metadata.from_bytes(data).signatures)


def _keyids(keyring: Keyring, role: str) -> set[str]:
    return {key.keyid for key in keyring.public_keys(role)}


# -- keyring ------------------------------------------------------------------------------------


def test_key_files_are_private(tmp_path: Path, keyring: Keyring) -> None:
    keys_dir = tmp_path / "keys"
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    pems = sorted(keys_dir.glob("*.pem"))
    assert len(pems) == len(ROLES)
    for path in [*pems, keys_dir / "keyring.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert all(path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----") for path in pems)


def test_keyring_loads_what_create_wrote(tmp_path: Path) -> None:
    created = Keyring.create(tmp_path / "keys", {"root": 2, "timestamp": 3})
    loaded = Keyring.load(tmp_path / "keys")
    for role in ROLES:
        assert _keyids(loaded, role) == _keyids(created, role)
        assert loaded.threshold(role) == created.threshold(role)
        assert len(loaded.signers(role)) == loaded.threshold(role)
    assert [loaded.threshold(role) for role in ROLES] == [2, 1, 1, 3]
    assert len(set().union(*(_keyids(loaded, role) for role in ROLES))) == 7


@pytest.mark.parametrize("thresholds", [{"mirror": 1}, {"root": 0}, {"targets": True}])
def test_keyring_rejects_bad_thresholds(tmp_path: Path, thresholds: dict[str, Any]) -> None:
    with pytest.raises(StoreError, match="role"):
        Keyring.create(tmp_path / "keys", thresholds)
    assert not (tmp_path / "keys").exists()


def test_keyring_create_twice_is_a_conflict(tmp_path: Path, keyring: Keyring) -> None:
    with pytest.raises(ConflictError, match="already holds signing keys"):
        Keyring.create(tmp_path / "keys")
    assert _keyids(Keyring.load(tmp_path / "keys"), "root") == _keyids(keyring, "root")


def test_missing_keyring_tells_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="edgefabric keys init"):
        Keyring.load(tmp_path / "nowhere")


def test_missing_key_file_is_below_threshold(tmp_path: Path, keyring: Keyring) -> None:
    (keyring_key,) = _keyids(keyring, "snapshot")
    (tmp_path / "keys" / f"snapshot.{keyring_key}.pem").unlink()
    with pytest.raises(SigningKeyError, match=r"'snapshot' needs 1 signing key\(s\), 0 usable"):
        Keyring.load(tmp_path / "keys")


def test_unreadable_key_file_is_below_threshold(tmp_path: Path, keyring: Keyring) -> None:
    (keyring_key,) = _keyids(keyring, "targets")
    (tmp_path / "keys" / f"targets.{keyring_key}.pem").write_bytes(b"not a key")
    with pytest.raises(SigningKeyError, match=r"'targets'.*edgefabric keys init"):
        Keyring.load(tmp_path / "keys")


def test_swapped_key_file_is_not_used(tmp_path: Path, keyring: Keyring) -> None:
    (root_key,) = _keyids(keyring, "root")
    (timestamp_key,) = _keyids(keyring, "timestamp")
    keys_dir = tmp_path / "keys"
    other = (keys_dir / f"timestamp.{timestamp_key}.pem").read_bytes()
    (keys_dir / f"root.{root_key}.pem").write_bytes(other)
    with pytest.raises(SigningKeyError, match=r"keyring\.json says"):
        Keyring.load(keys_dir)


# -- repository ---------------------------------------------------------------------------------


def test_create_writes_version_one_of_every_role(repo: TufRepository) -> None:
    names = sorted(path.name for path in repo.metadata_dir.glob("*.json"))
    assert names == [
        "1.root.json",
        "1.snapshot.json",
        "1.targets.json",
        "root.json",
        "timestamp.json",
    ]
    assert repo.targets() == {}
    assert repo.read_metadata("root.json") == repo.trusted_root()
    root = Metadata.from_bytes(repo.trusted_root()).signed
    assert root.consistent_snapshot is True
    assert root.expires == T0 + timedelta(days=365)
    assert repo.verify() == []


def test_publish_and_reopen_round_trip(tmp_path: Path, repo: TufRepository, clock: Clock) -> None:
    assert repo.publish([MODEL, GOLDEN]) == 2
    reopened = TufRepository.open(tmp_path / "store", Keyring.load(tmp_path / "keys"), clock=clock)
    assert reopened.targets() == {MODEL.path: MODEL, GOLDEN.path: GOLDEN}
    assert _version(reopened, "2.targets.json") == 2
    assert _version(reopened, "2.snapshot.json") == 2
    assert _version(reopened, "timestamp.json") == 2
    assert reopened.read_metadata("targets.json") is None  # consistent snapshots only
    assert reopened.verify() == []

    assert reopened.publish([GOLDEN]) == 3
    assert repo.targets() == {GOLDEN.path: GOLDEN}


def test_signed_contract_is_in_the_targets_metadata(repo: TufRepository) -> None:
    repo.publish([MODEL])
    data = repo.read_metadata("2.targets.json")
    assert data is not None
    entry = json.loads(data)["signed"]["targets"][MODEL.path]
    assert entry == {
        "length": MODEL.length,
        "hashes": {"sha256": MODEL.sha256},
        "custom": dict(MODEL.custom),
    }


def test_create_twice_is_a_conflict(tmp_path: Path, repo: TufRepository, keyring: Keyring) -> None:
    with pytest.raises(ConflictError):
        TufRepository.create(tmp_path / "store", keyring)
    assert repo.verify() == []


def test_open_with_another_keyring_is_a_signing_key_error(
    tmp_path: Path, repo: TufRepository
) -> None:
    stranger = Keyring.create(tmp_path / "other-keys")
    with pytest.raises(SigningKeyError, match="restore the keys"):
        TufRepository.open(tmp_path / "store", stranger)


def test_open_without_a_repository(tmp_path: Path, keyring: Keyring) -> None:
    with pytest.raises(StoreError, match="no TUF repository"):
        TufRepository.open(tmp_path / "empty", keyring)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (_spec("../escape.onnx", b"x"), StoreError, "relative"),
        (_spec("/abs/model.onnx", b"x"), StoreError, "relative"),
        (_spec("models//model.onnx", b"x"), StoreError, "relative"),
        (TargetSpec("models/a.onnx", 1, "ABC"), StoreError, "sha256"),
        (TargetSpec("models/a.onnx", -1, "0" * 64), StoreError, "length"),
        (_spec("models/a.onnx", b"x", atol=1e-5), StoreError, "as a string"),
        (_spec("models/a.onnx", b"x", shape={1: 2}), StoreError, "non-string key"),
    ],
)
def test_publish_rejects_bad_targets(
    repo: TufRepository, spec: TargetSpec, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        repo.publish([spec])
    assert _version(repo, "timestamp.json") == 1


def test_publish_rejects_duplicate_paths(repo: TufRepository) -> None:
    with pytest.raises(ConflictError, match="twice"):
        repo.publish([MODEL, MODEL])
    assert repo.targets() == {}


def test_target_file_name_puts_the_hash_first() -> None:
    assert TufRepository.target_file_name(MODEL) == f"models/mlp/3/{MODEL.sha256}.model.onnx"
    top = _spec("model.onnx", b"x")
    assert TufRepository.target_file_name(top) == f"{top.sha256}.model.onnx"
    as_tuf = TargetFile(MODEL.length, {"sha256": MODEL.sha256}, MODEL.path)
    assert as_tuf.get_prefixed_paths() == [TufRepository.target_file_name(MODEL)]


# -- expiry -------------------------------------------------------------------------------------


def test_refresh_timestamp_writes_nothing_while_fresh(repo: TufRepository, clock: Clock) -> None:
    repo.publish([MODEL])
    before = repo.read_metadata("timestamp.json")
    clock.advance(timedelta(hours=12))
    assert repo.refresh_timestamp(within=timedelta(hours=1)) is False
    assert repo.read_metadata("timestamp.json") == before


def test_refresh_timestamp_near_expiry(repo: TufRepository, clock: Clock) -> None:
    repo.publish([MODEL])
    clock.advance(timedelta(hours=23, minutes=30))
    assert repo.refresh_timestamp(within=timedelta(hours=1)) is True
    timestamp = Metadata.from_bytes(repo.read_metadata("timestamp.json") or b"").signed
    assert timestamp.version == 3
    assert timestamp.expires == clock.now + timedelta(days=1)
    assert _snapshot_version(repo) == 2  # snapshot (7 days) was not due
    assert repo.verify() == []


def test_refresh_timestamp_also_renews_snapshot_and_targets(
    repo: TufRepository, clock: Clock
) -> None:
    repo.publish([MODEL])
    clock.advance(timedelta(days=6, hours=23, minutes=30))
    assert repo.refresh_timestamp(within=timedelta(hours=1)) is True
    assert _snapshot_version(repo) == 3
    assert _version(repo, "3.snapshot.json") == 3
    assert repo.read_metadata("3.targets.json") is None  # targets (90 days) was not due

    clock.advance(timedelta(days=83))
    assert repo.refresh_timestamp(within=timedelta(hours=1)) is True
    assert _version(repo, "3.targets.json") == 3
    assert repo.targets() == {MODEL.path: MODEL}
    assert repo.verify() == []


def test_refresh_timestamp_renews_root_near_expiry(repo: TufRepository, clock: Clock) -> None:
    clock.advance(timedelta(days=364, hours=23, minutes=30))
    assert repo.refresh_timestamp(within=timedelta(hours=1)) is True
    assert repo.trusted_root() == repo.read_metadata("2.root.json")
    assert _version(repo, "timestamp.json") == 2
    assert repo.verify() == []


def test_refresh_timestamp_keeps_a_publish_made_elsewhere(
    tmp_path: Path, repo: TufRepository, clock: Clock
) -> None:
    # The serving process holds `repo`; the CLI publishes through its own instance.
    cli = TufRepository.open(tmp_path / "store", Keyring.load(tmp_path / "keys"), clock=clock)
    cli.publish([MODEL])
    clock.advance(timedelta(days=1))
    assert repo.refresh_timestamp(within=timedelta(hours=1)) is True
    assert _snapshot_version(repo) == 2
    assert repo.targets() == {MODEL.path: MODEL}


def test_verify_reports_expired_metadata(repo: TufRepository, clock: Clock) -> None:
    clock.advance(timedelta(days=2))
    problems = repo.verify()
    assert len(problems) == 1
    assert "timestamp.json expired" in problems[0]


# -- rotation -----------------------------------------------------------------------------------


def test_rotate_root(tmp_path: Path, repo: TufRepository, keyring: Keyring) -> None:
    repo.publish([MODEL])
    old = _keyids(keyring, "root")
    assert repo.rotate("root") == 2
    new = _keyids(keyring, "root")
    assert old.isdisjoint(new)
    assert _signers_of(repo, "2.root.json") == old | new
    assert repo.trusted_root() == repo.read_metadata("2.root.json")
    assert repo.read_metadata("root.json") == repo.read_metadata("2.root.json")
    root = Metadata.from_bytes(repo.trusted_root()).signed
    assert set(root.roles["root"].keyids) == new
    retired = {path.name for path in (tmp_path / "keys" / "retired").iterdir()}
    assert retired == {f"root.{keyid}.pem" for keyid in old}
    reloaded = Keyring.load(tmp_path / "keys")
    assert _keyids(reloaded, "root") == new
    assert TufRepository.open(tmp_path / "store", reloaded).targets() == {MODEL.path: MODEL}
    assert repo.verify() == []


def test_rotate_targets_resigns_the_chain(
    tmp_path: Path, repo: TufRepository, keyring: Keyring
) -> None:
    repo.publish([MODEL])
    old_root = _keyids(keyring, "root")
    old_targets = _keyids(keyring, "targets")
    assert repo.rotate("targets") == 2
    new_targets = _keyids(keyring, "targets")
    assert old_targets.isdisjoint(new_targets)
    assert _signers_of(repo, "2.root.json") == old_root
    assert _signers_of(repo, "3.targets.json") == new_targets
    assert _version(repo, "timestamp.json") == 3
    assert _snapshot_version(repo) == 3
    assert repo.targets() == {MODEL.path: MODEL}
    assert (tmp_path / "keys" / "retired" / f"targets.{next(iter(old_targets))}.pem").exists()
    assert repo.verify() == []


def test_rotate_timestamp_resigns_only_the_timestamp(repo: TufRepository, keyring: Keyring) -> None:
    repo.publish([MODEL])
    assert repo.rotate("timestamp") == 2
    assert _signers_of(repo, "timestamp.json") == _keyids(keyring, "timestamp")
    assert _version(repo, "timestamp.json") == 3
    assert _snapshot_version(repo) == 2
    assert repo.verify() == []


def test_rotate_unknown_role(repo: TufRepository) -> None:
    with pytest.raises(StoreError, match="unknown TUF role"):
        repo.rotate("mirror")


# -- verification -------------------------------------------------------------------------------


def test_verify_catches_an_edited_targets_file(tmp_path: Path, repo: TufRepository) -> None:
    repo.publish([MODEL])
    path = repo.metadata_dir / "2.targets.json"
    path.write_bytes(path.read_bytes().replace(b'"production"', b'"canary____"'))
    problems = repo.verify()
    assert len(problems) == 1
    assert "2.targets.json does not match" in problems[0]
    with pytest.raises(IntegrityError, match=r"2\.targets\.json"):
        TufRepository.open(tmp_path / "store", Keyring.load(tmp_path / "keys"))


def test_verify_catches_a_forged_signature(repo: TufRepository) -> None:
    path = repo.metadata_dir / "timestamp.json"
    path.write_bytes(path.read_bytes().replace(b'"version": 1', b'"version": 9'))
    problems = repo.verify()
    assert any("timestamp.json is not signed by enough timestamp keys" in p for p in problems)


def test_verify_catches_a_broken_root_chain(repo: TufRepository) -> None:
    repo.rotate("root")
    (repo.metadata_dir / "1.root.json").unlink()
    assert any("root versions [1] are missing" in p for p in repo.verify())


def test_verify_catches_a_missing_snapshot(repo: TufRepository) -> None:
    repo.publish([MODEL])
    (repo.metadata_dir / "2.snapshot.json").unlink()
    problems = repo.verify()
    assert problems == [
        "metadata/2.snapshot.json is missing but timestamp v2 names it; restore it from a backup"
    ]


# -- distribution -------------------------------------------------------------------------------


def test_read_metadata_serves_top_level_metadata(repo: TufRepository) -> None:
    for name in ("timestamp.json", "1.snapshot.json", "1.targets.json", "1.root.json", "root.json"):
        data = repo.read_metadata(name)
        assert data == (repo.metadata_dir / name).read_bytes()
    assert repo.read_metadata("2.root.json") is None


@pytest.mark.parametrize(
    "name",
    [
        "../keys/x",
        "/etc/passwd",
        "../../keys/keyring.json",
        "metadata/timestamp.json",
        "1.root.json/../timestamp.json",
        ".lock",
        "keyring.json",
        "timestamp.json\n",
        "0.root.json",
        "x.root.json",
        "",
    ],
)
def test_read_metadata_rejects_other_names(repo: TufRepository, name: str) -> None:
    assert repo.read_metadata(name) is None


def test_read_metadata_does_not_follow_links(tmp_path: Path, repo: TufRepository) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    (repo.metadata_dir / "7.root.json").symlink_to(secret)
    assert repo.read_metadata("7.root.json") is None
