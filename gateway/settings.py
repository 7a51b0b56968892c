"""Gateway process settings: environment (``EDGEFABRIC_GATEWAY_*``), then command-line flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["GatewaySettings"]


class GatewaySettings(BaseSettings):
    """Everything the gateway process needs to start."""

    model_config = SettingsConfigDict(env_prefix="EDGEFABRIC_GATEWAY_", frozen=True)

    model_repository: Path = Field(description="Triton-layout model repository to serve.")
    grpc_address: str = Field(
        "127.0.0.1", description="Address the gRPC API binds (loopback by default)."
    )
    grpc_port: int = Field(8001, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_address: str = Field("127.0.0.1", description="Address of the Prometheus endpoint.")
    metrics_port: int = Field(
        8002, ge=-1, le=65535, description="Prometheus /metrics port; 0 picks one, -1 disables."
    )
    max_message_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="Largest request or response message, in bytes."
    )
    max_concurrent_rpcs: int = Field(
        512,
        ge=0,
        description="RPCs in progress beyond which gRPC sheds new ones at once with "
        "RESOURCE_EXHAUSTED, before they queue in the process; 0: no limit.",
    )
    default_max_batch_size: int = Field(
        64, ge=1, description="max_batch_size given to batchable models that have no config.pbtxt."
    )
    execution_providers: tuple[str, ...] = Field(
        (), description="ONNX Runtime providers in order of preference; empty: best available."
    )
    intra_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads; 0: ORT decides."
    )
    inter_op_threads: int = Field(
        0, ge=0, description="ONNX Runtime inter-op threads; 0: ORT decides."
    )
    inline_max_us: int = Field(
        100,
        ge=0,
        description="Models averaging below this many microseconds per run execute on the "
        "event loop thread instead of a worker thread (a thread hand-off costs more); 0: never.",
    )
    drain_grace_s: float = Field(
        10.0, ge=0, description="Seconds in-flight requests get to finish on SIGTERM."
    )

    pools: tuple[str, ...] = Field(
        (),
        description="Remote KServe v2 pools as NAME=grpc://HOST:PORT (a Triton, MLServer or "
        "another gateway); their models are served next to the local ones.",
    )
    routes: tuple[str, ...] = Field(
        (), description="Route table entries (see gateway/routing/table.py for the syntax)."
    )

    @field_validator("pools")
    @classmethod
    def _pools_are_named_targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            name, sep, target = item.partition("=")
            if not sep or not name or not target.startswith("grpc://") or name == "local":
                raise ValueError(
                    f"pool {item!r}: expected NAME=grpc://HOST:PORT (NAME other than 'local')"
                )
        return value

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"model repository {value} is not a directory")
        return value
