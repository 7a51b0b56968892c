"""The Triton-layout model repository and the versions it serves.

``<root>/<model>/config.pbtxt`` plus numbered version folders holding ``model.onnx``. Loading
builds a complete new :class:`ServedModel` off the event loop and swaps it in with one
assignment; versions no longer served are retired and closed once their last in-flight request
finishes, so a reload never drops a request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2 as mc

from edgefabric.batching import BatchingConfig, BatchScheduler
from edgefabric.errors import (
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
)
from edgefabric.metrics import ServingMetrics
from edgefabric.models.config import (
    DEFAULT_MODEL_FILENAME,
    complete_config,
    read_config,
    select_versions,
)
from edgefabric.models.signature import ModelSignature
from edgefabric.runtime.base import LoadedModel, Runtime
from edgefabric.stats import VersionStats

__all__ = ["IndexEntry", "ModelRepository", "ModelState", "ServedModel", "ServedVersion"]

log = logging.getLogger(__name__)


class ModelState(StrEnum):
    """Repository states as the KServe v2 repository index reports them."""

    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass(eq=False)
class ServedVersion:
    """A loaded version; closed once retired and no request holds it."""

    version: int
    model: LoadedModel
    fingerprint: tuple[object, ...]
    stats: VersionStats = field(default_factory=VersionStats)
    batcher: BatchScheduler | None = None
    _inflight: int = 0
    _retired: bool = False

    @contextmanager
    def in_use(self) -> Iterator[LoadedModel]:
        """Hold the version for one request."""
        self._inflight += 1
        try:
            yield self.model
        finally:
            self._inflight -= 1
            if self._retired and self._inflight == 0:
                self.model.close()

    def retire(self) -> None:
        """Stop serving new requests; close now or when the last in-flight request ends."""
        self._retired = True
        if self._inflight == 0:
            self.model.close()


@dataclass(frozen=True, eq=False)
class ServedModel:
    """One model's completed config and its loaded versions (newest first)."""

    name: str
    config: mc.ModelConfig
    signature: ModelSignature
    versions: dict[int, ServedVersion]
    on_disk: tuple[int, ...]

    def resolve(self, version: str) -> ServedVersion:
        """The version a request names ("" means the newest loaded one)."""
        if not version:
            return next(iter(self.versions.values()))
        try:
            number = int(version)
        except ValueError:
            raise InvalidInputError(
                f"model {self.name!r}: version {version!r} is not a number"
            ) from None
        served = self.versions.get(number)
        if served is not None:
            return served
        loaded = list(self.versions)
        if number in self.on_disk:
            raise ModelNotReadyError(
                f"model {self.name!r} version {number} is not loaded (version policy serves "
                f"{loaded}); change the policy and load the model"
            )
        raise ModelNotFoundError(
            f"model {self.name!r} has no version {number}; loaded versions: {loaded}"
        )


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One row of the repository index."""

    name: str
    version: str
    state: ModelState
    reason: str = ""


def _version_folders(model_dir: Path, filename: str) -> dict[int, Path]:
    found = {}
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and (child / filename).is_file():
            found[int(child.name)] = child / filename
    return found


class ModelRepository:
    """Loads, swaps and unloads the models of one repository folder."""

    def __init__(
        self,
        root: Path,
        runtime: Runtime,
        *,
        default_max_batch_size: int = 64,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.root = root
        self._runtime = runtime
        self._metrics = metrics
        self._default_max_batch_size = default_max_batch_size
        self._models: dict[str, ServedModel] = {}
        self._states: dict[str, tuple[ModelState, str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def model_names(self) -> list[str]:
        """Names of the model folders on disk."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def get(self, name: str) -> ServedModel:
        """The served model ``name``; NOT_FOUND when unknown, UNAVAILABLE when not loaded."""
        served = self._models.get(name)
        if served is not None:
            return served
        state = self._states.get(name)
        if state is not None or (self.root / name).is_dir():
            status, reason = state or (ModelState.UNAVAILABLE, "not loaded")
            detail = f": {reason}" if reason else ""
            raise ModelNotReadyError(f"model {name!r} is {status.value}{detail}")
        raise ModelNotFoundError(f"unknown model {name!r}; known models: {self.model_names()}")

    def loaded(self) -> list[ServedModel]:
        """Every model currently serving."""
        return list(self._models.values())

    def index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        """Every model on disk or loaded, with its versions' states."""
        entries: list[IndexEntry] = []
        for name in sorted(set(self.model_names()) | set(self._models) | set(self._states)):
            served = self._models.get(name)
            if served is not None:
                entries.extend(IndexEntry(name, str(v), ModelState.READY) for v in served.versions)
                continue
            if ready_only:
                continue
            state, reason = self._states.get(name, (ModelState.UNAVAILABLE, "not loaded"))
            entries.append(IndexEntry(name, "", state, reason))
        return entries

    async def load_all(self) -> None:
        """Load every model on disk; a model that fails is logged and left UNAVAILABLE."""
        for name in self.model_names():
            try:
                await self.load(name)
            except ModelLoadError as exc:
                log.error("model %s failed to load: %s", name, exc)

    async def load(self, name: str, config_json: str = "") -> ServedModel:
        """Load (or reload) ``name``; the previous versions keep serving until the swap."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            previous = self._models.get(name)
            if previous is None:
                self._states[name] = (ModelState.LOADING, "")
            try:
                served = await asyncio.to_thread(self._build, name, previous, config_json)
            except (ModelLoadError, ModelNotFoundError) as exc:
                if previous is None:
                    self._states[name] = (ModelState.UNAVAILABLE, str(exc))
                raise
            self._models[name] = served
            self._states.pop(name, None)
            if previous is not None:
                for version in previous.versions.values():
                    if version not in served.versions.values():
                        version.retire()
            log.info("model %s serving versions %s", name, list(served.versions))
            return served

    async def unload(self, name: str) -> None:
        """Stop serving ``name``; in-flight requests finish on the versions they hold."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            served = self._models.pop(name, None)
            if served is None:
                self.get(name)  # raises NOT_FOUND for unknown names
                return
            self._states[name] = (ModelState.UNAVAILABLE, "unloaded")
            for version in served.versions.values():
                version.retire()
            log.info("model %s unloaded", name)

    def close(self) -> None:
        """Retire every served version."""
        for name in list(self._models):
            for version in self._models.pop(name).versions.values():
                version.retire()

    def _build(self, name: str, previous: ServedModel | None, config_json: str) -> ServedModel:
        model_dir = self.root / name
        if not model_dir.is_dir():
            raise ModelNotFoundError(f"no folder for model {name!r} in {self.root}")
        config = read_config(model_dir)
        if config_json:
            try:
                json_format.Parse(config_json, config)
            except json_format.ParseError as exc:
                raise ModelLoadError(f"model {name!r}: invalid config override: {exc}") from None
            config.name = name
        filename = config.default_model_filename or DEFAULT_MODEL_FILENAME
        on_disk = _version_folders(model_dir, filename)
        wanted = select_versions(config.version_policy, list(on_disk))
        if not wanted:
            raise ModelLoadError(
                f"model {name!r}: no version folder under {model_dir} holds {filename} "
                f"for the version policy (found versions {sorted(on_disk)})"
            )
        reusable = {v.fingerprint: v for v in previous.versions.values()} if previous else {}
        config_key = config.SerializeToString(deterministic=True)
        versions: dict[int, ServedVersion] = {}
        try:
            for number in wanted:
                path = on_disk[number]
                stat = path.stat()
                fingerprint = (str(path), stat.st_mtime_ns, stat.st_size, config_key)
                versions[number] = reusable.get(fingerprint) or ServedVersion(
                    number, self._runtime.load(path, config), fingerprint
                )
            newest = versions[wanted[0]].model
            completed = complete_config(
                config,
                newest.graph_inputs,
                newest.graph_outputs,
                default_max_batch_size=self._default_max_batch_size,
                source=str(model_dir),
            )
            signature = ModelSignature.from_config(completed)
            try:
                batching = BatchingConfig.from_model_config(completed)
            except ValueError as exc:
                raise ModelLoadError(str(exc)) from None
            for number, version in versions.items():
                if batching is not None and version.batcher is None:
                    version.batcher = BatchScheduler(
                        batching,
                        version.model,
                        version.stats,
                        self._metrics,
                        model_name=name,
                        version=str(number),
                    )
        except Exception:
            for version in versions.values():
                if version not in reusable.values():
                    version.retire()
            raise
        return ServedModel(name, completed, signature, versions, tuple(sorted(on_disk)))
