"""Agent process settings: a settings file, then ``EDGEFABRIC_AGENT_*``, then flags."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["AgentSettings", "read_settings_file"]


class AgentSettings(BaseSettings):
    """Everything a device's agent needs to start."""

    model_config = SettingsConfigDict(env_prefix="EDGEFABRIC_AGENT_", frozen=True)

    device_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="This device's id: its MQTT client id and its topic level.",
    )
    broker: str = Field(description="MQTT broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT.")
    trust_root: Path = Field(description="The store's TUF root.json this device trusts.")
    data_dir: Path = Field(description="Where slots, metadata, partial downloads and state live.")
    desired_key: Path | None = Field(
        None,
        description="The controller's ed25519 public key (PEM, the store's controller.pub): "
        "desired state that is unsigned or signed by another key is refused. Required unless "
        "allow_unsigned_desired is set.",
    )
    allow_unsigned_desired: bool = Field(
        False,
        description="Accept unsigned desired state (labs only: anyone who can publish to the "
        "broker could then steer the device).",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, description="Labels reported in the birth status (site, class)."
    )
    grpc_address: str = Field("127.0.0.1", description="Address of the local KServe v2 API.")
    grpc_port: int = Field(8101, ge=0, le=65535, description="Local gRPC port; 0 picks one.")
    health_interval_s: float = Field(5.0, gt=0, description="Seconds between health reports.")
    keep_previous: int = Field(2, ge=1, description="Previous versions kept on disk per model.")
    repo_timeout_s: float = Field(10.0, gt=0, description="Seconds to wait for one repo chunk.")
    retry_max_s: float = Field(
        60.0, gt=0, description="Longest pause between attempts to reach the broker or store."
    )
    max_install_crashes: int = Field(
        2,
        ge=1,
        description="Agent crashes during one version's install before it is marked failed.",
    )
    outbox_max_items: int = Field(
        10_000, ge=1, description="Events kept while offline; the oldest are dropped beyond it."
    )

    @model_validator(mode="after")
    def _desired_state_is_authenticated(self) -> AgentSettings:
        if self.desired_key is None and not self.allow_unsigned_desired:
            raise ValueError(
                "desired_key is required: give the store's controller.pub (--desired-key), or "
                "set allow_unsigned_desired for a lab"
            )
        return self

    @field_validator("trust_root")
    @classmethod
    def _trust_root_exists(cls, value: Path) -> Path:
        if not value.is_file():
            raise ValueError(f"{value} is not a file (give the store's tuf/metadata/root.json)")
        return value


def read_settings_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML file (keys as the field names); ValueError names the problem."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read agent settings: {exc}") from None
