"""A/B slots: the versions of one model kept on a device, each with an explicit lifecycle.

Layout under the slots root (the agent uses ``<data_dir>/models``)::

    <name>/state.json              active version, previous versions (newest first), and per
                                   version its state, failure reason and crash count
    <name>/<version>/model.onnx    the verified model
    <name>/<version>/golden.npz    its golden vectors, when the store has them
    <name>/<version>/target.json   the signed target's ``custom`` and the model's sha256

Lifecycle of one version; :data:`TRANSITIONS` is the only place that says what is legal::

    DOWNLOADING -> VERIFIED -> LOADING -> SELF_TEST -> READY -> DRAINING -> UNLOADED
    LOADING -> READY            re-serving a version that passed its self-test before
    UNLOADED -> LOADING         rollback to it, or serving it again after a restart
    DRAINING -> LOADING         rollback to it before its last request ended
    (almost) any -> FAILED      with a reason; FAILED -> DOWNLOADING fetches it again

A restart ends every process-bound state (:data:`AFTER_RESTART`): what was READY or DRAINING
is UNLOADED until served again, and an install cut short goes back to VERIFIED (those versions
are listed in :attr:`ModelSlots.interrupted`, for crash-loop detection).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from edgefabric.errors import ConflictError, IntegrityError, InvalidModelError, ModelNotFoundError
from edgefabric.files import fsync_dir, move_file, sha256_file, write_atomic

__all__ = ["AFTER_RESTART", "TRANSITIONS", "ModelSlots", "SlotState", "check_name"]

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
GOLDEN_FILE = "golden.npz"
TARGET_FILE = "target.json"
STATE_FILE = "state.json"
_STAGING_PREFIX = ".staging-"
_FORMAT = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class SlotState(StrEnum):
    """Where one version of a model is in its life on this device."""

    DOWNLOADING = "DOWNLOADING"
    VERIFIED = "VERIFIED"
    LOADING = "LOADING"
    SELF_TEST = "SELF_TEST"
    READY = "READY"
    DRAINING = "DRAINING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


_S = SlotState
TRANSITIONS: Mapping[SlotState, frozenset[SlotState]] = {
    _S.DOWNLOADING: frozenset({_S.VERIFIED, _S.FAILED}),
    _S.VERIFIED: frozenset({_S.LOADING, _S.FAILED}),
    _S.LOADING: frozenset({_S.SELF_TEST, _S.READY, _S.FAILED}),
    _S.SELF_TEST: frozenset({_S.READY, _S.FAILED}),
    _S.READY: frozenset({_S.DRAINING}),
    _S.DRAINING: frozenset({_S.UNLOADED, _S.LOADING}),
    _S.UNLOADED: frozenset({_S.LOADING, _S.FAILED}),
    _S.FAILED: frozenset({_S.DOWNLOADING}),
}
"""Legal moves: state -> the states it may go to next."""

AFTER_RESTART: Mapping[SlotState, SlotState] = {
    _S.READY: _S.UNLOADED,
    _S.DRAINING: _S.UNLOADED,
    _S.LOADING: _S.VERIFIED,
    _S.SELF_TEST: _S.VERIFIED,
}
"""How a state read back from disk is seen by a new process (others are kept)."""

_IN_PROGRESS = frozenset({_S.DOWNLOADING, _S.VERIFIED, _S.LOADING, _S.SELF_TEST})
_STARTS_AS = _S.DOWNLOADING


def check_name(name: str) -> str:
    """``name`` when it is safe as a folder name; else :class:`InvalidModelError`."""
    if not _NAME.fullmatch(name):
        raise InvalidModelError(
            f"model name {name!r} cannot name a folder: use letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, at most 128 characters"
        )
    return name


@dataclass(slots=True)
class _Record:
    state: SlotState
    reason: str = ""
    crashes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "reason": self.reason, "crashes": self.crashes}


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _parse_state(raw: Any) -> tuple[int | None, list[int], dict[int, _Record]]:
    """``state.json`` contents; ValueError/TypeError/KeyError when it is not ours or damaged."""
    if not isinstance(raw, dict) or raw.get("format") != _FORMAT:
        raise ValueError("not a slots state file of format 1")
    active = None if raw["active"] is None else _int(raw["active"])
    previous = [_int(v) for v in raw["previous"]]
    records = {
        int(key): _Record(SlotState(value["state"]), str(value["reason"]), _int(value["crashes"]))
        for key, value in raw["versions"].items()
    }
    return active, previous, records


class ModelSlots:
    """Versions of one model kept on disk, the active one and the previous ones (newest first).

    Every change is written to ``state.json`` atomically before the call returns, so a restart
    (or a power cut) finds the last state; a missing or damaged ``state.json`` is rebuilt from
    the version folders, with a warning. Use one instance per model per process; not
    thread-safe.
    """

    def __init__(self, root: Path, name: str, *, keep_previous: int = 2) -> None:
        if keep_previous < 0:
            raise ValueError(f"keep_previous must be 0 or more, got {keep_previous}")
        self.name = check_name(name)
        self.folder = root / name
        self.keep_previous = keep_previous
        self._active: int | None = None
        self._previous: list[int] = []
        self._records: dict[int, _Record] = {}
        self.interrupted: tuple[int, ...] = ()
        """Versions whose load or self-test the last process did not finish."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        self._open()

    @classmethod
    def discover(cls, root: Path, *, keep_previous: int = 2) -> dict[str, ModelSlots]:
        """Every model with slots (a state file or version folders) under ``root``, by name."""
        if not root.is_dir():
            return {}
        found = {}
        for child in sorted(root.iterdir()):
            if not (child.is_dir() and _NAME.fullmatch(child.name)):
                continue
            if (child / STATE_FILE).exists() or any(p.name.isdigit() for p in child.iterdir()):
                found[child.name] = cls(root, child.name, keep_previous=keep_previous)
        return found

    # -- reading ---------------------------------------------------------------------------

    @property
    def active(self) -> int | None:
        """The version this device serves (or served last), if any."""
        return self._active

    @property
    def previous(self) -> list[int]:
        """Versions served before the active one, newest first."""
        return list(self._previous)

    @property
    def versions(self) -> dict[int, SlotState]:
        """Every version this device knows of, with its state (for health reports)."""
        return {v: r.state for v, r in sorted(self._records.items())}

    def state(self, version: int) -> SlotState | None:
        """The version's state, or None when this device does not know it."""
        record = self._records.get(version)
        return None if record is None else record.state

    def reason(self, version: int) -> str:
        """Why the version last went to FAILED ("" otherwise)."""
        return self._record(version).reason

    def crashes(self, version: int) -> int:
        """How many crashes were recorded against the version."""
        return self._record(version).crashes

    def version_dir(self, version: int) -> Path:
        """The folder holding the version's files."""
        return self.folder / str(version)

    def model_path(self, version: int) -> Path:
        """The version's ``model.onnx``."""
        return self.version_dir(version) / MODEL_FILE

    def golden_path(self, version: int) -> Path | None:
        """The version's ``golden.npz``, or None when it has no golden vectors."""
        path = self.version_dir(version) / GOLDEN_FILE
        return path if path.is_file() else None

    def custom(self, version: int) -> dict[str, Any]:
        """The signed target's ``custom`` as it was installed."""
        return dict(self._target(version)["custom"])

    def rollback_target(self) -> int | None:
        """The newest previous version still on disk and not FAILED."""
        for version in self._previous:
            if self.state(version) is not _S.FAILED and self.model_path(version).is_file():
                return version
        return None

    def verify(self, version: int) -> None:
        """Check the version's files against the hashes recorded at install (reads them all).

        Raises :class:`IntegrityError` when a file is missing or its bytes changed on disk.
        """
        target = self._target(version)
        checks = [(self.model_path(version), str(target["sha256"]))]
        golden = target["custom"].get("golden")
        if isinstance(golden, Mapping) and golden.get("sha256"):
            checks.append((self.version_dir(version) / GOLDEN_FILE, str(golden["sha256"])))
        for path, expected in checks:
            if not path.is_file():
                raise IntegrityError(f"slot {self._ref(version)}: {path} is missing")
            actual = sha256_file(path)
            if actual != expected:
                raise IntegrityError(
                    f"slot {self._ref(version)}: {path.name} has sha256 {actual[:16]}…, "
                    f"installed as {expected[:16]}…; the file changed on disk, fetch the "
                    "version again"
                )

    # -- changing --------------------------------------------------------------------------

    def install_verified(
        self,
        version: int,
        model: Path,
        golden: Path | None,
        target_custom: Mapping[str, Any],
    ) -> Path:
        """Move verified files into the version's folder (one rename); the state is VERIFIED.

        ``model`` and ``golden`` are moved, not copied: put them on the same filesystem. The
        version must be new to this device or DOWNLOADING. Returns the version folder.
        """
        if version < 1:
            raise InvalidModelError(f"model {self.name!r}: version {version} is not positive")
        current = self.state(version)
        if current is not None:
            self._check_move(version, current, _S.VERIFIED)
        staging = Path(tempfile.mkdtemp(dir=self.folder, prefix=f"{_STAGING_PREFIX}{version}-"))
        try:
            move_file(model, staging / MODEL_FILE)
            if golden is not None:
                move_file(golden, staging / GOLDEN_FILE)
            target = {"custom": dict(target_custom), "sha256": sha256_file(staging / MODEL_FILE)}
            write_atomic(staging / TARGET_FILE, json.dumps(target, sort_keys=True).encode())
            final = self.version_dir(version)
            if final.exists():  # left over from an earlier, failed attempt
                shutil.rmtree(final)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(self.folder)
        record = self._records.setdefault(version, _Record(_S.VERIFIED))
        record.state, record.reason = _S.VERIFIED, ""
        self._save()
        return final

    def set_state(self, version: int, state: SlotState, reason: str = "") -> None:
        """Move the version to ``state`` (``reason`` says why it FAILED).

        Raises :class:`ConflictError` when :data:`TRANSITIONS` does not allow the move.
        """
        record = self._records.get(version)
        if record is None:
            if state is not _STARTS_AS:
                raise ConflictError(
                    f"slot {self._ref(version)} is not on this device; a version starts as "
                    f"{_STARTS_AS} (set_state) or VERIFIED (install_verified), not {state}"
                )
            self._records[version] = _Record(state)
        else:
            self._check_move(version, record.state, state)
            record.state, record.reason = state, reason if state is _S.FAILED else ""
        if state is _S.FAILED:
            log.warning("slot %s FAILED: %s", self._ref(version), reason or "no reason given")
        self._save()

    def activate(self, version: int) -> None:
        """Make ``version`` the active one; the active one so far becomes ``previous[0]``.

        Keeps ``keep_previous`` previous versions and deletes other folders, except the
        active one and versions still being installed. Activating the active one changes
        nothing.
        """
        state = self.state(version)
        if state is None or state in (_S.DOWNLOADING, _S.FAILED):
            raise ConflictError(
                f"slot {self._ref(version)} is {state or 'not on this device'}; only a "
                "verified version on disk can become active"
            )
        if not self.model_path(version).is_file():
            raise ConflictError(f"slot {self._ref(version)} has no {MODEL_FILE} on disk")
        if version == self._active:
            return
        order = [self._active] if self._active is not None else []
        order += [v for v in self._previous if v not in order]
        kept = [v for v in order if v != version and self.state(v) is not _S.FAILED]
        self._active = version
        self._previous = kept[: self.keep_previous]
        dropped = {v for v in order if v != version and v not in self._previous}
        pruned = sorted(dropped | self._strays())
        for old in pruned:
            if old in self._records and self._records[old].state is not _S.FAILED:
                del self._records[old]  # FAILED records stay, so a bad version is remembered
        self._save()
        for old in pruned:
            shutil.rmtree(self.version_dir(old), ignore_errors=True)
        log.info("model %s: version %s active, previous %s", self.name, version, self._previous)

    def record_crash(self, version: int) -> int:
        """Count one more crash against the version (persisted); returns the new count."""
        record = self._record(version)
        record.crashes += 1
        self._save()
        return record.crashes

    # -- internals -------------------------------------------------------------------------

    def _ref(self, version: int) -> str:
        return f"{self.name}:{version}"

    def _record(self, version: int) -> _Record:
        record = self._records.get(version)
        if record is None:
            raise ModelNotFoundError(f"slot {self._ref(version)} is not on this device")
        return record

    def _target(self, version: int) -> dict[str, Any]:
        path = self.version_dir(version) / TARGET_FILE
        try:
            target = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise IntegrityError(f"slot {self._ref(version)}: {path} is missing") from None
        except (OSError, ValueError) as exc:
            raise IntegrityError(
                f"slot {self._ref(version)}: {path} is unreadable: {exc}"
            ) from None
        if not isinstance(target, dict) or not isinstance(target.get("custom"), dict):
            raise IntegrityError(f"slot {self._ref(version)}: {path} has no target custom")
        return target

    def _check_move(self, version: int, current: SlotState, new: SlotState) -> None:
        allowed = TRANSITIONS[current]
        if new not in allowed:
            choices = ", ".join(sorted(allowed)) or "nothing"
            raise ConflictError(
                f"slot {self._ref(version)} is {current}; it cannot go to {new} "
                f"(from {current} it may go to {choices})"
            )

    def _strays(self) -> set[int]:
        """Versions on disk or on record that are neither kept nor still being installed."""
        keep = {self._active, *self._previous}
        on_disk = {int(p.name) for p in self.folder.iterdir() if p.is_dir() and p.name.isdigit()}
        candidates = (on_disk | set(self._records)) - keep
        return {v for v in candidates if self.state(v) not in _IN_PROGRESS}

    def _open(self) -> None:
        path = self.folder / STATE_FILE
        try:
            raw = json.loads(path.read_bytes())
            self._active, self._previous, self._records = _parse_state(raw)
        except FileNotFoundError:
            if any(p.name.isdigit() for p in self.folder.iterdir()):
                log.warning("model %s: %s is missing; rebuilding it from folders", self.name, path)
                self._rebuild()
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            log.warning(
                "model %s: %s is damaged (%s); rebuilding it from folders", self.name, path, exc
            )
            with contextlib.suppress(OSError):  # kept for a post-mortem
                shutil.copyfile(path, path.with_name(f"{STATE_FILE}.damaged"))
            self._rebuild()
            return
        interrupted = []
        for version, record in self._records.items():
            if record.state in (_S.LOADING, _S.SELF_TEST):
                interrupted.append(version)
            record.state = AFTER_RESTART.get(record.state, record.state)
        self.interrupted = tuple(sorted(interrupted))

    def _rebuild(self) -> None:
        """Versions from their folders: complete ones VERIFIED, no active one (not known)."""
        self._active, self._previous, self._records = None, [], {}
        for child in sorted(self.folder.iterdir()):
            if not (child.is_dir() and child.name.isdigit()):
                continue
            complete = (child / MODEL_FILE).is_file() and (child / TARGET_FILE).is_file()
            self._records[int(child.name)] = (
                _Record(_S.VERIFIED)
                if complete
                else _Record(_S.FAILED, f"incomplete on disk: no {MODEL_FILE} or {TARGET_FILE}")
            )
        self._save()

    def _save(self) -> None:
        state = {
            "format": _FORMAT,
            "model": self.name,
            "active": self._active,
            "previous": self._previous,
            "versions": {str(v): r.to_json() for v, r in sorted(self._records.items())},
        }
        write_atomic(self.folder / STATE_FILE, json.dumps(state, indent=1).encode())
