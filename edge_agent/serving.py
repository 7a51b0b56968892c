"""The device's local KServe v2 server, and the safe way to change the version it serves.

The server reads a Triton-layout folder that only the agent writes: per model, a
``config.pbtxt`` whose version policy names exactly one version, and that version's
``model.onnx`` (a hard link to the slot's file, or a copy). Installing a version:

    LOADING    the slot's files are checked against their recorded hashes, then loaded in a
               standalone session that serves nobody
    SELF_TEST  the graph is compared with the signed contract and the signed golden vectors
               are run and compared within their tolerances
    READY      file placed, config switched, repository swapped: new requests go to the new
               version; requests already running finish on the old one, which is DRAINING
               until the last of them ends, then UNLOADED (its files stay, as a previous slot)

Any failure leaves the version FAILED with the reason, the served version untouched, and
raises. Rolling back and restoring after a restart serve a version that passed its self-test
before: its files are checked against their hashes, the golden vectors are not run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from edge_agent._selftest import self_test
from edge_agent.slots import ModelSlots, SlotState
from edgefabric.dataplane import DataPlane, RequestObserver, ServerInfo
from edgefabric.errors import EdgefabricError, IntegrityError, ModelLoadError
from edgefabric.files import write_atomic
from edgefabric.inference import Tensors
from edgefabric.kserve.server import KServeServer, ServerOptions, start_server
from edgefabric.metrics import ServingMetrics
from edgefabric.models.config import (
    CONFIG_FILENAME,
    DEFAULT_MODEL_FILENAME,
    ONNX_PLATFORM,
    GraphTensor,
)
from edgefabric.models.repository import ModelRepository
from edgefabric.runtime.base import LoadedModel, Runtime, RunTimings
from edgefabric.runtime.onnx import OnnxRuntime, OrtOptions
from edgefabric.security.tls import ServerTls

__all__ = ["DeviceServer", "SelfTestError", "ServingOptions"]

log = logging.getLogger(__name__)


class SelfTestError(ModelLoadError):
    """A version loaded but broke its signed contract or missed its golden vectors."""


@dataclass(frozen=True, slots=True)
class ServingOptions:
    """Where the device's server listens and how it runs models. ``port`` 0 picks a free one.

    ``max_concurrent_rpcs``: past this many RPCs in progress gRPC answers RESOURCE_EXHAUSTED
    itself (``None``: no limit). ``listen`` False opens no port at all: the data plane then
    serves only in-process callers such as the MQTT relay (devices behind NAT).
    """

    address: str = "127.0.0.1"
    port: int = 0
    listen: bool = True
    max_message_bytes: int = 64 * 1024 * 1024
    max_concurrent_rpcs: int | None = None
    default_max_batch_size: int = 64
    ort: OrtOptions = field(default_factory=OrtOptions)
    tls: ServerTls | None = None
    """TLS (mutual TLS with a client CA); ``None``: plaintext, refused off loopback unless
    ``insecure``."""
    insecure: bool = False


class _ReportingModel:
    """A loaded model that reports when it is closed (the end of its drain)."""

    def __init__(self, inner: LoadedModel, on_close: Callable[[], None]) -> None:
        self._inner = inner
        self._on_close: Callable[[], None] | None = on_close

    @property
    def graph_inputs(self) -> Sequence[GraphTensor]:
        """Inputs as the graph declares them."""
        return self._inner.graph_inputs

    @property
    def graph_outputs(self) -> Sequence[GraphTensor]:
        """Outputs as the graph declares them."""
        return self._inner.graph_outputs

    @property
    def execution_provider(self) -> str:
        """The provider the model runs on."""
        return self._inner.execution_provider

    async def infer(
        self, inputs: Tensors, output_names: Sequence[str]
    ) -> tuple[Tensors, RunTimings]:
        """Run once."""
        return await self._inner.infer(inputs, output_names)

    def close(self) -> None:
        """Close the model, then report it (once)."""
        self._inner.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


class _CountingRuntime:
    """Counts the repository's open models per (model, version), so a drain's end is known."""

    def __init__(self, inner: Runtime, on_release: Callable[[str, int], None]) -> None:
        self._inner = inner
        self._on_release = on_release
        self._lock = threading.Lock()
        self._open: Counter[tuple[str, int]] = Counter()

    def load(self, path: Path, config: mc.ModelConfig) -> LoadedModel:
        """Load through the wrapped runtime (called from a worker thread)."""
        model = self._inner.load(path, config)
        key = (str(config.name), int(path.parent.name))
        with self._lock:
            self._open[key] += 1
        return _ReportingModel(model, lambda: self._release(key))

    def open_count(self, name: str, version: int) -> int:
        """How many loaded copies of the version are not closed yet."""
        with self._lock:
            return self._open[(name, version)]

    def _release(self, key: tuple[str, int]) -> None:
        with self._lock:
            self._open[key] -= 1
        self._on_release(*key)


def _config_text(name: str, version: int) -> str:
    config = mc.ModelConfig(name=name, platform=ONNX_PLATFORM)
    config.version_policy.specific.versions.append(version)
    header = "# Written by the edge agent; replaced on every switch.\n"
    return header + text_format.MessageToString(config)


def _config(name: str, version: int) -> mc.ModelConfig:
    return text_format.Parse(_config_text(name, version), mc.ModelConfig())


def _place(source: Path, target: Path) -> None:
    """Put ``source`` at ``target`` (hard link, else copy) with one rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    incoming = target.with_name(f".{target.name}.incoming")
    incoming.unlink(missing_ok=True)
    try:
        os.link(source, incoming)
    except OSError:  # another filesystem, or links not supported
        shutil.copyfile(source, incoming)
    os.replace(incoming, target)


def _remove_versions(model_dir: Path, *, keep: int | None) -> None:
    """Delete version folders of the serving copy, except ``keep``."""
    if not model_dir.is_dir():
        return
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) != keep:
            shutil.rmtree(child, ignore_errors=True)


class DeviceServer:
    """The agent's local KServe v2 server over ``serving_dir``, and the switches it makes."""

    def __init__(
        self,
        serving_dir: Path,
        options: ServingOptions | None = None,
        runtime: Runtime | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self.serving_dir = serving_dir
        self.options = options or ServingOptions()
        self._runtime = runtime or OnnxRuntime(self.options.ort)
        self._counted = _CountingRuntime(self._runtime, self._released)
        metrics = ServingMetrics()
        self.repository = ModelRepository(
            serving_dir,
            self._counted,
            default_max_batch_size=self.options.default_max_batch_size,
            metrics=metrics,
        )
        self.data = DataPlane(
            self.repository, ServerInfo(name="edgefabric-agent"), metrics, observer
        )
        self._server: KServeServer | None = None
        self._started = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: dict[str, ModelSlots] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (serving nothing until :meth:`install` or :meth:`restore`)."""
        if self._started:
            raise RuntimeError("the device server is already started")
        self._loop = asyncio.get_running_loop()
        self.serving_dir.mkdir(parents=True, exist_ok=True)
        options = self.options
        if not options.listen:
            self._started = True
            self.data.set_ready(True)
            log.info("no inbound gRPC port: serving in-process callers (the MQTT relay) only")
            return
        self._server = await start_server(
            self.data,
            ServerOptions(
                address=options.address,
                port=options.port,
                max_message_bytes=options.max_message_bytes,
                max_concurrent_rpcs=options.max_concurrent_rpcs,
                tls=options.tls,
                insecure=options.insecure,
            ),
        )
        self._started = True

    @property
    def listening(self) -> bool:
        """Whether an inbound gRPC port is open."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound gRPC port."""
        if self._server is None:
            raise RuntimeError(
                "the device server has no port: not started, or started with listen=False"
            )
        return self._server.port

    async def stop(self, grace_s: float = 5.0) -> None:
        """Report NOT_SERVING, let in-flight requests finish for ``grace_s``, release models."""
        if not self._started:
            return
        self._started = False
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        self.data.set_ready(False)
        self.repository.close()

    # -- what is served --------------------------------------------------------------------

    def served(self) -> dict[str, int]:
        """Model name -> the version serving now."""
        return {m.name: next(iter(m.versions)) for m in self.repository.loaded()}

    @property
    def execution_provider(self) -> str:
        """Providers the served models run on, comma-separated ("" when none is served)."""
        providers = {
            version.model.execution_provider
            for model in self.repository.loaded()
            for version in model.versions.values()
        }
        return ", ".join(sorted(providers))

    # -- switching -------------------------------------------------------------------------

    async def install(self, slots: ModelSlots, version: int) -> None:
        """Load, self-test and switch to a VERIFIED (or UNLOADED) version.

        Raises :class:`SelfTestError` (contract or golden vectors), :class:`ModelLoadError`
        (the runtime or the repository refused it) or :class:`IntegrityError` (files changed
        on disk); the version is then FAILED and the served version keeps serving.
        """
        async with self._lock(slots):
            await self._serve(slots, version, self_test=True)

    async def rollback(self, slots: ModelSlots) -> int | None:
        """Serve :meth:`ModelSlots.rollback_target` again; the version served, or None.

        A target whose files fail their hash check is marked FAILED and the next one is
        tried; None when no previous version could be served.
        """
        async with self._lock(slots):
            return await self._serve_previous(slots)

    async def restore(self, slots: Mapping[str, ModelSlots]) -> None:
        """After a restart: serve each model's active version from disk, with no network.

        When the active version cannot be served, previous ones are tried; a model with no
        active version (its state was lost) gets its newest VERIFIED version, self-tested.
        Failures are logged and leave that model unserved; other models are not affected.
        """
        for name, model_slots in sorted(slots.items()):
            async with self._lock(model_slots):
                if name in self.served():
                    continue
                if await self._restore_one(model_slots) is None:
                    log.error("model %s: no version on disk could be served", name)

    # -- internals -------------------------------------------------------------------------

    def _lock(self, slots: ModelSlots) -> asyncio.Lock:
        self._slots[slots.name] = slots
        return self._locks.setdefault(slots.name, asyncio.Lock())

    async def _restore_one(self, slots: ModelSlots) -> int | None:
        active = slots.active
        if active is not None and slots.state(active) is not SlotState.FAILED:
            try:
                await self._serve(slots, active, self_test=False)
                return active
            except EdgefabricError as exc:
                log.error(
                    "model %s: version %d cannot be served again: %s", slots.name, active, exc
                )
        if active is not None:
            return await self._serve_previous(slots)
        for version, state in sorted(slots.versions.items(), reverse=True):
            if state is SlotState.VERIFIED:
                try:
                    await self._serve(slots, version, self_test=True)
                    return version
                except EdgefabricError as exc:
                    log.error("model %s: version %d failed: %s", slots.name, version, exc)
        return None

    async def _serve_previous(self, slots: ModelSlots) -> int | None:
        tried: set[int] = set()
        while (target := slots.rollback_target()) is not None and target not in tried:
            tried.add(target)
            try:
                await self._serve(slots, target, self_test=False)
                return target
            except EdgefabricError as exc:
                log.error("model %s: rollback to version %d failed: %s", slots.name, target, exc)
        return None

    async def _serve(self, slots: ModelSlots, version: int, *, self_test: bool) -> None:
        """LOADING [-> SELF_TEST] -> switch -> READY; FAILED (and raise) on any error."""
        name = slots.name
        serving = self.served().get(name)
        keeps = (
            "no version of it is served" if serving is None else f"version {serving} keeps serving"
        )
        slots.set_state(version, SlotState.LOADING)
        try:
            try:
                await asyncio.to_thread(slots.verify, version)
            except IntegrityError as exc:
                raise IntegrityError(f"{exc}; {keeps}") from None
            if self_test:
                await self._self_test(slots, version, keeps)
            await self._switch(slots, version, serving, keeps)
        except Exception as exc:
            slots.set_state(version, SlotState.FAILED, str(exc))
            raise
        log.info("model %s: version %d serving (was %s)", name, version, serving)

    async def _self_test(self, slots: ModelSlots, version: int, keeps: str) -> None:
        ref = f"model {slots.name!r} version {version}"
        config = _config(slots.name, version)
        try:
            model = await asyncio.to_thread(self._runtime.load, slots.model_path(version), config)
        except EdgefabricError as exc:
            raise ModelLoadError(f"{ref} did not load; {keeps}: {exc}") from None
        try:
            slots.set_state(version, SlotState.SELF_TEST)
            problems = await self_test(model, slots.custom(version), slots.golden_path(version))
        finally:
            model.close()
        if problems:
            raise SelfTestError(f"{ref} failed its self-test; {keeps}: " + "; ".join(problems))

    async def _switch(
        self, slots: ModelSlots, version: int, serving: int | None, keeps: str
    ) -> None:
        name = slots.name
        model_dir = self.serving_dir / name
        config_path = model_dir / CONFIG_FILENAME
        old_config = config_path.read_bytes() if config_path.is_file() else None
        target = model_dir / str(version) / DEFAULT_MODEL_FILENAME
        try:
            await asyncio.to_thread(_place, slots.model_path(version), target)
            await asyncio.to_thread(write_atomic, config_path, _config_text(name, version).encode())
            await self.repository.load(name)
        except BaseException as exc:
            if old_config is None:
                config_path.unlink(missing_ok=True)
            else:
                write_atomic(config_path, old_config)
            shutil.rmtree(target.parent, ignore_errors=True)
            if isinstance(exc, EdgefabricError):
                raise ModelLoadError(
                    f"model {name!r} version {version} did not load; {keeps}: {exc}"
                ) from None
            raise
        slots.activate(version)
        slots.set_state(version, SlotState.READY)
        if serving is not None and serving != version and slots.state(serving) is SlotState.READY:
            slots.set_state(serving, SlotState.DRAINING)
            self._settle(name, serving)
        await asyncio.to_thread(_remove_versions, model_dir, keep=version)

    def _released(self, name: str, version: int) -> None:
        """A loaded copy was closed (any thread): settle its slot on the event loop."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing left to settle
                loop.call_soon_threadsafe(self._settle, name, version)

    def _settle(self, name: str, version: int) -> None:
        slots = self._slots.get(name)
        if (
            slots is not None
            and slots.state(version) is SlotState.DRAINING
            and self._counted.open_count(name, version) == 0
        ):
            slots.set_state(version, SlotState.UNLOADED)
            log.info("model %s: version %d drained and unloaded", name, version)
