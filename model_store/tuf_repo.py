"""The model store's TUF repository: top-level metadata written with python-tuf's Metadata API.

Files under ``<root_dir>/metadata/`` (consistent snapshots)::

    N.root.json        every root version, kept; root.json is a copy of the newest
    N.targets.json     the signed target set; ``custom`` carries each model's contract
    N.snapshot.json    records targets.json's version, length and sha256
    timestamp.json     records snapshot.json's version, length and sha256 (never versioned)

Target bytes do not live here: clients fetch ``dir/<sha256>.<name>`` (see
:meth:`TufRepository.target_file_name`) and the store serves it from its content-addressed
blobs. Every change runs under an exclusive lock on ``metadata/.lock`` and starts from what is
on disk, so a serving process re-signing the timestamp never rolls back a publish made by
another process. Files are replaced atomically; the timestamp is always written last.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Both packages re-export these names without __all__; mypy --strict needs the ignore.
from securesystemslib.signer import Signer  # type: ignore[attr-defined]
from tuf.api.exceptions import LengthOrHashMismatchError, UnsignedMetadataError
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Metadata,
    MetaFile,
    Root,
    Signed,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from edgefabric.errors import ConflictError, IntegrityError, SigningKeyError, StoreError
from edgefabric.files import write_atomic
from model_store.keys import ROLES, Keyring

__all__ = ["ExpiryPolicy", "TargetSpec", "TufRepository"]

_METADATA_DIR = "metadata"
_LOCK_FILE = ".lock"
_HASH = "sha256"
# Only plain top-level metadata names are ever served: no separators, so no traversal.
_SERVED_NAME = re.compile(r"(?:[1-9][0-9]{0,9}\.)?(?:root|targets|snapshot|timestamp)\.json")
_ROOT_NAME = re.compile(r"([1-9][0-9]{0,9})\.root\.json")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SERIALIZER = JSONSerializer(compact=False)


@dataclass(frozen=True)
class TargetSpec:
    """One signed target: a model file or its golden vectors, and its signed contract."""

    path: str
    """Target path, e.g. ``models/mlp/3/model.onnx``."""
    length: int
    """Size in bytes."""
    sha256: str
    """Lower-case hex SHA-256 of the bytes."""
    custom: Mapping[str, Any] = field(default_factory=dict)
    """The signed model contract; JSON without floats (canonical JSON cannot sign them)."""


@dataclass(frozen=True)
class ExpiryPolicy:
    """How long each role's metadata stays valid after it is signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    def __post_init__(self) -> None:
        for role in ROLES:
            if _lifetime(self, role) <= timedelta(0):
                raise ValueError(f"expiry of {role} metadata must be positive")


@dataclass
class _State:
    """The verified top-level metadata as it is on disk."""

    root: Metadata[Root]
    root_bytes: bytes
    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _lifetime(policy: ExpiryPolicy, role: str) -> timedelta:
    lifetimes = {
        "root": policy.root,
        "targets": policy.targets,
        "snapshot": policy.snapshot,
        "timestamp": policy.timestamp,
    }
    return lifetimes[role]


def _check_target_path(path: str) -> None:
    parts = path.split("/")
    if (
        not path
        or "\\" in path
        or any(ch < " " or ch == "\x7f" for ch in path)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise StoreError(
            f"target path {path!r} must be relative, '/'-separated, without empty, '.' or '..' "
            "parts, e.g. 'models/mlp/3/model.onnx'"
        )


def _plain_json(value: Any, where: str) -> Any:
    """A copy of ``value`` made of dict/list/str/int/bool/None; StoreError on anything else."""
    if value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        raise StoreError(
            f"{where} is the float {value!r}; canonical JSON cannot sign floats, "
            "store it as a string (e.g. '1e-05')"
        )
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise StoreError(f"{where} has the non-string key {key!r}; JSON keys are strings")
            copy[key] = _plain_json(item, f"{where}.{key}")
        return copy
    if isinstance(value, list | tuple):
        return [_plain_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise StoreError(f"{where} is a {type(value).__name__}; only JSON values can be signed")


def _target_file(spec: TargetSpec) -> TargetFile:
    _check_target_path(spec.path)
    if isinstance(spec.length, bool) or not isinstance(spec.length, int) or spec.length < 0:
        raise StoreError(f"target {spec.path!r}: length must be an integer >= 0, got {spec.length}")
    if not _SHA256_HEX.fullmatch(spec.sha256):
        raise StoreError(
            f"target {spec.path!r}: sha256 must be 64 lower-case hex digits, got {spec.sha256!r}"
        )
    custom = _plain_json(spec.custom, f"target {spec.path!r}: custom")
    return TargetFile(spec.length, {_HASH: spec.sha256}, spec.path, {"custom": custom})


def _target_spec(target: TargetFile) -> TargetSpec:
    digest = target.hashes.get(_HASH)
    custom = target.custom if target.custom is not None else {}
    if digest is None or not isinstance(custom, dict):
        raise IntegrityError(
            f"target {target.path!r} in targets metadata lacks a sha256 hash or a custom object"
        )
    return TargetSpec(target.path, target.length, digest, custom)


def _parse(data: bytes, role: type[Signed], name: str) -> Metadata[Any]:
    try:
        metadata: Metadata[Any] = Metadata.from_bytes(data)
    except DeserializationError as exc:
        raise IntegrityError(f"metadata/{name} is not valid TUF metadata: {exc}") from None
    if not isinstance(metadata.signed, role):
        raise IntegrityError(
            f"metadata/{name} holds {metadata.signed.type} metadata, expected {role.type}"
        )
    return metadata


def _check_signed(root: Root, role: str, metadata: Metadata[Any], name: str) -> None:
    try:
        root.verify_delegate(role, metadata.signed_bytes, metadata.signatures)
    except UnsignedMetadataError as exc:
        raise IntegrityError(
            f"metadata/{name} is not signed by enough {role} keys of root v{root.version}: {exc}"
        ) from None


class TufRepository:
    """The store's TUF repository. Build one with :meth:`create` or :meth:`open`."""

    def __init__(
        self,
        root_dir: Path,
        keyring: Keyring,
        *,
        clock: Callable[[], datetime] = _utc_now,
        expiry: ExpiryPolicy = ExpiryPolicy(),
    ) -> None:
        self.root_dir = root_dir
        self.metadata_dir = root_dir / _METADATA_DIR
        self._keyring = keyring
        self._clock = clock
        self._expiry = expiry

    @classmethod
    def create(
        cls,
        root_dir: Path,
        keyring: Keyring,
        *,
        clock: Callable[[], datetime] = _utc_now,
        expiry: ExpiryPolicy = ExpiryPolicy(),
    ) -> TufRepository:
        """Write version 1 of every role (empty target set); ConflictError if one exists."""
        repo = cls(root_dir, keyring, clock=clock, expiry=expiry)
        repo.metadata_dir.mkdir(parents=True, exist_ok=True)
        with repo._locked():
            if repo._root_versions():
                raise ConflictError(f"{repo.metadata_dir} already holds a TUF repository")
            now = repo._now()
            root = Root(expires=now + expiry.root, consistent_snapshot=True)
            for role in ROLES:
                for key in keyring.public_keys(role):
                    root.add_key(key, role)
                root.roles[role].threshold = keyring.threshold(role)
            root_md = Metadata(root)
            repo._sign(root_md, keyring.signers("root"))
            state = _State(
                root=root_md,
                root_bytes=repo._write_root(root_md),
                targets=Metadata(Targets()),
                snapshot=Metadata(Snapshot()),
                timestamp=Metadata(Timestamp()),
            )
            repo._resign(state, now, "targets", bump=False)
        return repo

    @classmethod
    def open(
        cls,
        root_dir: Path,
        keyring: Keyring,
        *,
        clock: Callable[[], datetime] = _utc_now,
        expiry: ExpiryPolicy = ExpiryPolicy(),
    ) -> TufRepository:
        """Open what is on disk; IntegrityError if it does not verify, SigningKeyError if the
        keyring does not hold the keys the root lists."""
        repo = cls(root_dir, keyring, clock=clock, expiry=expiry)
        with repo._locked(shared=True):
            repo._check_keyring(repo._load().root.signed)
        return repo

    def publish(self, targets: Sequence[TargetSpec]) -> int:
        """Make ``targets`` the complete signed target set; returns the new targets version."""
        files: dict[str, TargetFile] = {}
        for spec in targets:
            if spec.path in files:
                raise ConflictError(f"target {spec.path!r} is listed twice; paths must be unique")
            files[spec.path] = _target_file(spec)
        now = self._now()
        with self._locked():
            state = self._load()
            self._check_keyring(state.root.signed)
            state.targets.signed.targets = files
            self._resign(state, now, "targets")
            return state.targets.signed.version

    def targets(self) -> dict[str, TargetSpec]:
        """The current signed target set, by path."""
        with self._locked(shared=True):
            state = self._load()
        return {path: _target_spec(t) for path, t in state.targets.signed.targets.items()}

    def refresh_timestamp(self, *, within: timedelta) -> bool:
        """Re-sign the timestamp (and snapshot, targets, root) where it expires within ``within``
        of ``clock()``; True when anything was written. Keep ``within`` well below the
        timestamp lifetime, or every call writes a new version."""
        now = self._now()
        horizon = now + within
        with self._locked():
            state = self._load()
            self._check_keyring(state.root.signed)
            wrote = False
            if state.root.signed.expires <= horizon:
                root = state.root.signed
                root.version += 1
                root.expires = now + self._expiry.root
                self._sign(state.root, self._keyring.signers("root"))
                self._write_root(state.root)
                wrote = True
            due = {
                "targets": state.targets.signed.expires,
                "snapshot": state.snapshot.signed.expires,
                "timestamp": state.timestamp.signed.expires,
            }
            for role, expires in due.items():  # chain order: the first due role re-signs the rest
                if expires <= horizon:
                    self._resign(state, now, role)
                    return True
            return wrote

    def rotate(self, role: str) -> int:
        """Replace ``role``'s keys and return the new root version, which the old root keys sign
        (and, for ``root``, the new ones too); metadata of a non-root role is re-signed."""
        if role not in ROLES:
            raise StoreError(f"unknown TUF role {role!r}; expected one of {', '.join(ROLES)}")
        now = self._now()
        with self._locked():
            state = self._load()
            root = state.root.signed
            self._check_keyring(root)
            old, new = self._keyring.replace_keys(role)
            for signer in old:
                root.revoke_key(signer.public_key.keyid, role)
            for signer in new:
                root.add_key(signer.public_key, role)
            root.version += 1
            root.expires = now + self._expiry.root
            root_signers = [*old, *new] if role == "root" else self._keyring.signers("root")
            self._sign(state.root, root_signers)
            self._write_root(state.root)
            if role != "root":
                self._resign(state, now, role)
            return root.version

    def read_metadata(self, filename: str) -> bytes | None:
        """Bytes of ``metadata/<filename>`` for the distribution server; None when absent or not
        a top-level metadata name (``timestamp.json``, ``3.snapshot.json``, ``2.root.json``)."""
        if not _SERVED_NAME.fullmatch(filename):
            return None
        try:
            fd = os.open(self.metadata_dir / filename, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return None
            return handle.read()

    def verify(self) -> list[str]:
        """Re-check every signature chain, hash and version on disk; human-readable problems."""
        with self._locked(shared=True):
            problems = self._root_chain_problems()
            try:
                state = self._load()
            except (IntegrityError, StoreError) as exc:
                return [*problems, *([str(exc)] if str(exc) not in problems else [])]
        problems.extend(self._keyring_problems(state.root.signed))
        now = self._now()
        for name, signed in (
            (f"{state.root.signed.version}.root.json", state.root.signed),
            (f"{state.targets.signed.version}.targets.json", state.targets.signed),
            (f"{state.snapshot.signed.version}.snapshot.json", state.snapshot.signed),
            ("timestamp.json", state.timestamp.signed),
        ):
            if signed.is_expired(now):
                problems.append(
                    f"metadata/{name} expired at {signed.expires:%Y-%m-%dT%H:%M:%SZ}; "
                    "re-sign it (refresh_timestamp) so clients accept the repository again"
                )
        for target in state.targets.signed.targets.values():
            try:
                _target_spec(target)
            except IntegrityError as exc:
                problems.append(str(exc))
        return problems

    def trusted_root(self) -> bytes:
        """The newest root metadata, what an agent is given as its ``--trust-root``."""
        with self._locked(shared=True):
            return self._load().root_bytes

    @staticmethod
    def target_file_name(spec: TargetSpec) -> str:
        """The consistent-snapshot path clients fetch: ``models/mlp/3/<sha256>.model.onnx``."""
        parent, sep, name = spec.path.rpartition("/")
        return f"{parent}{sep}{spec.sha256}.{name}"

    # -- internals ----------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the repository clock must return timezone-aware datetimes")
        return now.astimezone(UTC)

    @contextlib.contextmanager
    def _locked(self, *, shared: bool = False) -> Iterator[None]:
        """Writers hold the lock exclusively; readers share it, so they never see a rotation's
        new root together with metadata still signed by the old keys."""
        try:
            fd = os.open(self.metadata_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            raise StoreError(
                f"no TUF repository in {self.metadata_dir}; create one first"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _root_versions(self) -> list[int]:
        try:
            names = os.listdir(self.metadata_dir)
        except FileNotFoundError:
            return []
        found = (_ROOT_NAME.fullmatch(name) for name in names)
        return sorted(int(match.group(1)) for match in found if match)

    def _read(self, name: str, needed_by: str) -> bytes:
        try:
            return (self.metadata_dir / name).read_bytes()
        except FileNotFoundError:
            raise IntegrityError(
                f"metadata/{name} is missing but {needed_by} names it; restore it from a backup"
            ) from None

    def _load_role(
        self, name: str, role: type[Signed], root: Root, meta: MetaFile, needed_by: str
    ) -> Metadata[Any]:
        data = self._read(name, needed_by)
        try:
            meta.verify_length_and_hashes(data)
        except LengthOrHashMismatchError as exc:
            raise IntegrityError(
                f"metadata/{name} does not match the length/sha256 {needed_by} records ({exc}); "
                "it was altered after signing"
            ) from None
        metadata = _parse(data, role, name)
        _check_signed(root, role.type, metadata, name)
        if metadata.signed.version != meta.version:
            raise IntegrityError(
                f"metadata/{name} holds version {metadata.signed.version}, {needed_by} "
                f"records {meta.version}"
            )
        return metadata

    def _load(self) -> _State:
        versions = self._root_versions()
        if not versions:
            raise StoreError(f"no TUF repository in {self.metadata_dir}; create one first")
        name = f"{versions[-1]}.root.json"
        root_bytes = self._read(name, "the directory listing")
        root_md: Metadata[Root] = _parse(root_bytes, Root, name)
        root = root_md.signed
        _check_signed(root, "root", root_md, name)
        if root.version != versions[-1]:
            raise IntegrityError(f"metadata/{name} holds root version {root.version}")
        timestamp: Metadata[Timestamp] = _parse(
            self._read("timestamp.json", "the repository layout"), Timestamp, "timestamp.json"
        )
        _check_signed(root, "timestamp", timestamp, "timestamp.json")
        snapshot_meta = timestamp.signed.snapshot_meta
        snapshot: Metadata[Snapshot] = self._load_role(
            f"{snapshot_meta.version}.snapshot.json",
            Snapshot,
            root,
            snapshot_meta,
            f"timestamp v{timestamp.signed.version}",
        )
        targets_meta = snapshot.signed.meta.get("targets.json")
        if targets_meta is None:
            raise IntegrityError(
                f"snapshot v{snapshot.signed.version} does not record targets.json"
            )
        targets: Metadata[Targets] = self._load_role(
            f"{targets_meta.version}.targets.json",
            Targets,
            root,
            targets_meta,
            f"snapshot v{snapshot.signed.version}",
        )
        return _State(root_md, root_bytes, targets, snapshot, timestamp)

    def _root_chain_problems(self) -> list[str]:
        """Each root version must be signed by its predecessor's and its own root keys."""
        versions = self._root_versions()
        if not versions:
            return [f"no root metadata in {self.metadata_dir}"]
        problems: list[str] = []
        if versions != list(range(1, versions[-1] + 1)):
            missing = sorted(set(range(1, versions[-1] + 1)) - set(versions))
            problems.append(f"root versions {missing} are missing; clients cannot walk the chain")
        previous: Root | None = None
        newest = b""
        for version in versions:
            name = f"{version}.root.json"
            try:
                newest = self._read(name, "the directory listing")
                metadata: Metadata[Root] = _parse(newest, Root, name)
            except IntegrityError as exc:
                problems.append(str(exc))
                previous = None
                continue
            root = metadata.signed
            if root.version != version:
                problems.append(f"metadata/{name} holds root version {root.version}")
                previous = None
                continue
            link = previous if previous is not None and previous.version == version - 1 else None
            result = root.get_root_verification_result(
                link, metadata.signed_bytes, metadata.signatures
            )
            if not result:
                signers = "its own" if link is None else f"root v{link.version}'s and its own"
                problems.append(f"metadata/{name} is not signed to threshold by {signers} keys")
            previous = root
        if (self.metadata_dir / "root.json").exists() and self._read(
            "root.json", "the repository layout"
        ) != newest:
            problems.append(f"metadata/root.json is not a copy of {versions[-1]}.root.json")
        return problems

    def _keyring_problems(self, root: Root) -> list[str]:
        problems = []
        for role in ROLES:
            listed = root.roles[role]
            held = {key.keyid for key in self._keyring.public_keys(role)}
            if not held <= set(listed.keyids) or len(held) < listed.threshold:
                problems.append(
                    f"the keyring in {self._keyring.keys_dir} holds {len(held)} {role} key(s), "
                    f"root v{root.version} needs {listed.threshold} of "
                    f"{sorted(listed.keyids)}; restore the keys that match this repository"
                )
        return problems

    def _check_keyring(self, root: Root) -> None:
        problems = self._keyring_problems(root)
        if problems:
            raise SigningKeyError("; ".join(problems))

    def _sign(self, metadata: Metadata[Any], signers: Sequence[Signer]) -> None:
        metadata.signatures.clear()
        for signer in signers:
            metadata.sign(signer, append=True)

    def _write(self, name: str, metadata: Metadata[Any]) -> bytes:
        data = metadata.to_bytes(_SERIALIZER)
        write_atomic(self.metadata_dir / name, data)
        return data

    def _write_root(self, root: Metadata[Root]) -> bytes:
        data = self._write(f"{root.signed.version}.root.json", root)
        write_atomic(self.metadata_dir / "root.json", data)
        return data

    def _resign(self, state: _State, now: datetime, first: str, *, bump: bool = True) -> None:
        """Sign and write ``first`` and every role after it in targets → snapshot → timestamp,
        each with a fresh expiry (and version + 1 when ``bump``)."""
        chain = ("targets", "snapshot", "timestamp")
        for role in chain[chain.index(first) :]:
            metadata: Metadata[Any] = getattr(state, role)
            signed: Signed = metadata.signed
            if bump:
                signed.version += 1
            signed.expires = now + _lifetime(self._expiry, role)
            self._sign(metadata, self._keyring.signers(role))
            if role == "targets":
                data = self._write(f"{signed.version}.targets.json", metadata)
                state.snapshot.signed.meta["targets.json"] = MetaFile.from_data(
                    signed.version, data, [_HASH]
                )
            elif role == "snapshot":
                data = self._write(f"{signed.version}.snapshot.json", metadata)
                state.timestamp.signed.snapshot_meta = MetaFile.from_data(
                    signed.version, data, [_HASH]
                )
            else:
                self._write("timestamp.json", metadata)
