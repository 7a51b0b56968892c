"""The model store: one object behind every ``edgefabric model|keys|audit`` command.

Every change runs under the store's write lock and one registry transaction, in this order:
validate (nothing written yet) → blobs (content-addressed, atomic) → registry rows → signed TUF
metadata → audit entry → commit. A failure at any step rolls the registry back and removes
blobs this change added, so the store is left as it was.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgefabric.errors import ConflictError, IntegrityError, InvalidModelError, StoreError
from edgefabric.golden import GoldenVectors, Tolerance, read_inputs_npz, run_model_bytes
from edgefabric.models.contract import ModelContract, inspect_onnx
from edgefabric.targets import golden_target_path, model_target_path
from model_store.audit import GENESIS, AuditLog
from model_store.blobs import BlobStore
from model_store.home import StoreHome
from model_store.keys import Keyring
from model_store.registry import GoldenRef, ModelVersion, Registry, Stage, check_model_name
from model_store.tuf_repo import TargetSpec, TufRepository

__all__ = ["ModelStore", "PushRequest", "golden_target_path", "model_target_path"]

ACTOR_ENV = "EDGEFABRIC_ACTOR"
_AUDIT_HEAD = "audit_head"


@dataclass(frozen=True)
class PushRequest:
    """What ``model push`` was asked to store."""

    path: Path
    name: str
    version: int | None = None
    labels: Mapping[str, str] | None = None
    lineage: Mapping[str, str] | None = None
    golden_inputs: Path | None = None
    tolerance: Tolerance = field(default_factory=Tolerance)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidModelError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise InvalidModelError(f"{path}: is a folder, expected a {what} file") from None


class ModelStore:
    """Registry, blobs, TUF repository and audit log of one ``EDGEFABRIC_HOME``."""

    def __init__(self, home: StoreHome, *, actor: str | None = None) -> None:
        self.home = home
        self.actor = actor or os.environ.get(ACTOR_ENV) or getpass.getuser()
        self.registry = Registry(home.database)
        self.blobs = BlobStore(home.blobs)
        self.audit = AuditLog(home.audit_log)

    def close(self) -> None:
        """Release the registry connection."""
        self.registry.close()

    # ------------------------------------------------------------------ signing

    def keyring(self) -> Keyring:
        """The signing keys (:class:`SigningKeyError` telling how to create them if missing)."""
        return Keyring.load(self.home.keys)

    def tuf(self) -> TufRepository:
        """The TUF repository, opened with the store's keys."""
        return TufRepository.open(self.home.tuf, self.keyring())

    def init_keys(self, thresholds: Mapping[str, int] | None = None) -> TufRepository:
        """Create the signing keys and an empty signed repository."""
        with self._change():
            keyring = Keyring.create(self.home.keys, thresholds)
            repository = TufRepository.create(self.home.tuf, keyring)
            repository.publish(self._targets())
            from model_store.fleet import controller_key  # noqa: PLC0415  (fleet imports us)

            controller_key(self.home, create=True)
            self.record("keys.init", "keys", {"thresholds": dict(thresholds or {})})
        return repository

    def rotate_keys(self, role: str) -> int:
        """Replace ``role``'s keys; returns the new root version."""
        with self._change():
            version = self.tuf().rotate(role)
            self.record("keys.rotate", role, {"root_version": version})
        return version

    # ------------------------------------------------------------------ changes

    def push(self, request: PushRequest) -> ModelVersion:
        """Validate, store, register and sign a new model version."""
        name = check_model_name(request.name)
        data = _read_file(request.path, "model")
        contract = inspect_onnx(data, source=request.path)
        golden = self._golden(request, data, contract) if request.golden_inputs else None
        with self._change():
            repository = self.tuf()  # fails early, before anything is written
            number = request.version or self.registry.next_version(name)
            if number < 1:
                raise InvalidModelError(f"version must be 1 or more, got {number}")
            added: list[str] = []
            try:
                digest, new = self.blobs.put(data)
                added += [digest] if new else []
                golden_ref = None
                if golden is not None:
                    golden_bytes = golden.to_npz()
                    golden_digest, new = self.blobs.put(golden_bytes)
                    added += [golden_digest] if new else []
                    golden_ref = GoldenRef(
                        golden_digest,
                        len(golden_bytes),
                        {k: v.to_json() for k, v in golden.tolerances.items()},
                    )
                version = ModelVersion(
                    name=name,
                    version=number,
                    sha256=digest,
                    size=len(data),
                    stage=Stage.NONE,
                    contract=contract.to_json(),
                    created_at=_now(),
                    created_by=self.actor,
                    labels=dict(request.labels or {}),
                    lineage=dict(request.lineage or {}),
                    golden=golden_ref,
                )
                self.registry.insert(version)
                repository.publish(self._targets())
                self.record("model.push", version.ref, {"sha256": digest, "size": len(data)})
            except BaseException:
                for blob in added:
                    self.blobs.remove(blob)
                raise
        return version

    def promote(self, name: str, version: int, stage: Stage) -> ModelVersion:
        """Move a version to ``stage``; promoting to production archives the previous one."""
        if stage in (Stage.NONE, Stage.DEPRECATED, Stage.ARCHIVED):
            raise ConflictError(f"cannot promote to {stage.value!r}: use staging or production")
        with self._change():
            current = self.registry.get(name, version)
            if current.stage is Stage.DEPRECATED:
                raise ConflictError(f"{current.ref} is deprecated and cannot be promoted")
            if current.stage is stage:
                raise ConflictError(f"{current.ref} is already in {stage.value}")
            archived = []
            if stage is Stage.PRODUCTION:
                for other in self.registry.versions(name):
                    if other.stage is Stage.PRODUCTION:
                        self.registry.set_stage(name, other.version, Stage.ARCHIVED)
                        archived.append(other.version)
            self.registry.set_stage(name, version, stage)
            self.tuf().publish(self._targets())
            details = {"from": current.stage.value, "to": stage.value, "archived": archived}
            self.record("model.promote", current.ref, details)
        return self.registry.get(name, version)

    def deprecate(self, name: str, version: int) -> ModelVersion:
        """Mark a version deprecated: still signed (so devices learn of it), never promoted."""
        with self._change():
            current = self.registry.get(name, version)
            if current.stage is Stage.DEPRECATED:
                raise ConflictError(f"{current.ref} is already deprecated")
            self.registry.set_stage(name, version, Stage.DEPRECATED)
            self.tuf().publish(self._targets())
            self.record("model.deprecate", current.ref, {"from": current.stage.value})
        return self.registry.get(name, version)

    # ------------------------------------------------------------------ reading

    def resolve(self, ref: str) -> list[ModelVersion]:
        """``NAME`` (every version) or ``NAME:VERSION`` (that one)."""
        name, _, version = ref.partition(":")
        if not version:
            versions = self.registry.versions(name)
            if not versions:
                self.registry.latest(name)  # raises the not-found error
            return versions
        try:
            number = int(version)
        except ValueError:
            raise InvalidModelError(f"{ref!r}: version must be a number, like {name}:3") from None
        return [self.registry.get(name, number)]

    def verify(self, ref: str | None = None) -> dict[str, list[str]]:
        """Problems per version (blob hashes, signed targets) and for the repository itself."""
        versions = self.resolve(ref) if ref else self.registry.versions()
        keyring = self.keyring()
        signed: dict[str, TargetSpec] = {}
        try:
            repository = TufRepository.open(self.home.tuf, keyring)
            report: dict[str, list[str]] = {"repository": repository.verify()}
            signed = repository.targets()
        except (IntegrityError, StoreError) as exc:
            report = {"repository": [str(exc)]}
        expected = {t.path: t for t in self._targets()}
        for version in versions:
            problems: list[str] = []
            paths = [model_target_path(version.name, version.version)]
            problems += filter(None, [self.blobs.check(version.sha256)])
            if version.golden is not None:
                problems += filter(None, [self.blobs.check(version.golden.sha256)])
                paths.append(golden_target_path(version.name, version.version))
            for path in paths:
                target = signed.get(path)
                if target is None:
                    problems.append(f"{path} is not a signed target")
                elif target != expected[path]:
                    problems.append(f"{path}: signed target differs from the registry")
            report[version.ref] = problems
        return report

    def audit_problems(self) -> list[str]:
        """Problems in the audit log's hash chain (empty: intact)."""
        return self.audit.verify(self._audit_head())

    # ------------------------------------------------------------------ internals

    @contextmanager
    def _change(self) -> Iterator[None]:
        with self.home.exclusive(), self.registry.transaction():
            yield

    def _golden(self, request: PushRequest, model: bytes, contract: ModelContract) -> GoldenVectors:
        assert request.golden_inputs is not None
        source = str(request.golden_inputs)
        inputs = read_inputs_npz(_read_file(request.golden_inputs, "golden inputs"), source=source)
        wanted = {t.name for t in contract.inputs}
        if set(inputs) != wanted:
            raise InvalidModelError(
                f"{source}: golden inputs are {sorted(inputs)} but the model takes "
                f"{sorted(wanted)}; save one array per model input"
            )
        outputs = run_model_bytes(model, inputs)
        return GoldenVectors(inputs, outputs, {name: request.tolerance for name in outputs})

    def _targets(self) -> list[TargetSpec]:
        targets = []
        for version in self.registry.versions():
            golden: dict[str, Any] | None = None
            if version.golden is not None:
                path = golden_target_path(version.name, version.version)
                golden = {
                    "path": path,
                    "sha256": version.golden.sha256,
                    "length": version.golden.size,
                    "tolerances": version.golden.tolerances,
                }
                custom = {"kind": "golden", "name": version.name, "version": version.version}
                targets.append(TargetSpec(path, version.golden.size, version.golden.sha256, custom))
            custom = {
                "kind": "model",
                "name": version.name,
                "version": version.version,
                "stage": version.stage.value,
                "contract": version.contract,
                "labels": version.labels,
                "golden": golden,
            }
            path = model_target_path(version.name, version.version)
            targets.append(TargetSpec(path, version.size, version.sha256, custom))
        return targets

    def _audit_head(self) -> tuple[int, str]:
        seq, _, digest = self.registry.meta(_AUDIT_HEAD, f"0:{GENESIS}").partition(":")
        return int(seq), digest

    def record(self, action: str, subject: str, details: Mapping[str, Any]) -> None:
        """Append to the audit log (call inside a change, so the head commits with it)."""
        entry = self.audit.append(
            actor=self.actor,
            action=action,
            subject=subject,
            details=details,
            head=self._audit_head(),
        )
        self.registry.set_meta(_AUDIT_HEAD, f"{entry.seq}:{entry.hash}")
