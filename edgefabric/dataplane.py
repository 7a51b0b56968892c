"""The transport-neutral data plane: what every KServe v2 front end delegates to."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from edgefabric import __version__
from edgefabric.errors import DeadlineExceededError, EdgefabricError, grpc_status_for
from edgefabric.inference import InferenceRequest, InferenceResponse
from edgefabric.metrics import ServingMetrics
from edgefabric.models.repository import IndexEntry, ModelRepository, ServedModel, ServedVersion
from edgefabric.stats import VersionStats
from edgefabric.telemetry import tracing

__all__ = ["DataPlane", "RequestObserver", "ServerInfo"]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What ``ServerMetadata`` reports."""

    name: str = "edgefabric"
    version: str = __version__
    extensions: tuple[str, ...] = ("model_repository", "statistics", "model_configuration")


RequestObserver = Callable[[str, int, float, str], None]
"""Called on the event loop once per admitted request: model, version, seconds, status name."""


class DataPlane:
    """Health, metadata, inference, statistics and repository control over a model repository."""

    def __init__(
        self,
        repository: ModelRepository,
        info: ServerInfo | None = None,
        metrics: ServingMetrics | None = None,
        observer: RequestObserver | None = None,
    ) -> None:
        self.repository = repository
        self.info = info or ServerInfo()
        self.metrics = metrics or ServingMetrics()
        self._observer = observer
        self._ready = False

    def live(self) -> bool:
        """The process is up."""
        return True

    def ready(self) -> bool:
        """Accepting inference (false while starting and while draining)."""
        return self._ready

    def set_ready(self, ready: bool) -> None:
        """Flip readiness (the server does this on start and before draining)."""
        self._ready = ready

    def resolve(self, name: str, version: str = "") -> tuple[ServedModel, ServedVersion]:
        """The served model and version a request names."""
        served = self.repository.get(name)
        return served, served.resolve(version)

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether that model (version) can serve now.

        Asked for every routed request, so a model that is not served locally costs a scan of
        the loaded models, not the repository lookup's directory listing and error message.
        """
        served = next((m for m in self.repository.loaded() if m.name == name), None)
        if served is None:
            return False
        try:
            served.resolve(version)
        except EdgefabricError:
            return False
        return True

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        """The completed Triton-style config of a served model."""
        served, _ = self.resolve(name, version)
        return served.config

    async def infer(self, request: InferenceRequest) -> InferenceResponse:
        """Validate and run one request; every failure is a project error."""
        arrived = time.perf_counter_ns()
        served, version = self.resolve(request.model_name, request.model_version)
        version_label = str(version.version)
        try:
            served.signature.validate(request)
            if request.deadline_s is not None and time.monotonic() >= request.deadline_s:
                raise DeadlineExceededError(
                    f"model {served.name!r}: the request's deadline passed before it could run"
                )
            output_names = request.requested_outputs or served.signature.output_names
            with version.in_use() as model:
                if version.batcher is not None:
                    outputs = await version.batcher.infer(request, output_names)
                else:
                    with tracing.span("execute"):
                        outputs, timings = await model.infer(request.inputs, output_names)
                    version.stats.record_execution(timings, request.batch_rows, requests=1)
                    compute_ns = timings.input_ns + timings.infer_ns + timings.output_ns
                    self.metrics.observe_compute(served.name, version_label, compute_ns / 1e9)
        except EdgefabricError as exc:
            elapsed = time.perf_counter_ns() - arrived
            version.stats.record_failure(elapsed)
            self._answered(served.name, version.version, grpc_status_for(exc).name, elapsed)
            raise
        elapsed = time.perf_counter_ns() - arrived
        version.stats.record_success(elapsed)
        self._answered(served.name, version.version, "OK", elapsed)
        return InferenceResponse(
            model_name=served.name, model_version=version_label, id=request.id, outputs=outputs
        )

    def _answered(self, model: str, version: int, code: str, elapsed_ns: int) -> None:
        seconds = elapsed_ns / 1e9
        self.metrics.observe(model, str(version), code, seconds)
        if self._observer is not None:
            self._observer(model, version, seconds, code)

    def statistics(self, name: str = "", version: str = "") -> list[tuple[str, int, VersionStats]]:
        """Counters of one model (version), or of every served model when ``name`` is empty."""
        if name:
            served = self.repository.get(name)
            chosen = [served.resolve(version)] if version else list(served.versions.values())
            return [(served.name, v.version, v.stats) for v in chosen]
        return [
            (served.name, v.version, v.stats)
            for served in self.repository.loaded()
            for v in served.versions.values()
        ]

    def repository_index(self, *, ready_only: bool = False) -> list[IndexEntry]:
        """Models on disk and their states."""
        return self.repository.index(ready_only=ready_only)

    async def load_model(self, name: str, config_json: str = "") -> None:
        """Load or reload a model without dropping in-flight requests."""
        await self.repository.load(name, config_json)

    async def unload_model(self, name: str) -> None:
        """Stop serving a model; in-flight requests finish."""
        await self.repository.unload(name)
