"""Agent process settings: a settings file, then ``EDGEFABRIC_AGENT_*``, then flags."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from edgefabric.security.listener_settings import ListenerTlsSettings
from edgefabric.security.tls import check_exposure

__all__ = ["AgentSettings", "read_settings_file"]


class AgentSettings(ListenerTlsSettings):
    """Everything a device's agent needs to start."""

    model_config = SettingsConfigDict(env_prefix="EDGEFABRIC_AGENT_", frozen=True)

    device_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="This device's id: its MQTT client id and its topic level.",
    )
    broker: str = Field(description="MQTT broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT.")
    mqtt_ca: Path | None = Field(
        None,
        description="CA certificate (PEM) that signed an mqtts:// broker's certificate "
        "(`edgefabric fleet enroll` writes it as ca.pem); default: the system's CAs.",
    )
    mqtt_cert: Path | None = Field(
        None, description="This device's client certificate (PEM, CN = device id) for mqtts://."
    )
    mqtt_key: Path | None = Field(
        None, description="The client certificate's private key (PEM, keep it mode 0600)."
    )
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
    grpc_listen: bool = Field(
        True,
        description="Open the inbound KServe v2 gRPC port; false for devices that accept no "
        "inbound connections (behind NAT): they serve only through the MQTT relay.",
    )
    relay_max_in_flight: int = Field(
        8,
        ge=0,
        description="Inference requests relayed over MQTT (ef/v1/dev/{device}/infer) answered at "
        "once; more are refused with RESOURCE_EXHAUSTED. 0 turns the relay off.",
    )
    metrics_address: str = Field("127.0.0.1", description="Address of the Prometheus endpoint.")
    metrics_port: int = Field(
        -1, ge=-1, le=65535, description="Prometheus /metrics port; 0 picks one, -1 (default) off."
    )
    otlp_endpoint: str = Field(
        "",
        description="OpenTelemetry collector (OTLP/gRPC, http://HOST:4317) for traces of relayed "
        "requests; empty: $OTEL_EXPORTER_OTLP_ENDPOINT, and when that is unset tracing is off.",
    )
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
    def _exposure_is_chosen(self) -> AgentSettings:
        if self.grpc_listen:
            check_exposure(self.grpc_address, tls=self.tls_cert is not None, insecure=self.insecure)
        return self

    @model_validator(mode="after")
    def _something_serves(self) -> AgentSettings:
        if not self.grpc_listen and self.relay_max_in_flight == 0:
            raise ValueError(
                "grpc_listen is false and relay_max_in_flight is 0: the device could serve no "
                "one; open the gRPC port or allow relayed requests"
            )
        return self

    @model_validator(mode="after")
    def _desired_state_is_authenticated(self) -> AgentSettings:
        if self.desired_key is None and not self.allow_unsigned_desired:
            raise ValueError(
                "desired_key is required: give the store's controller.pub (--desired-key), or "
                "set allow_unsigned_desired for a lab"
            )
        return self

    @model_validator(mode="after")
    def _mqtt_tls_is_complete(self) -> AgentSettings:
        given = {"mqtt_ca": self.mqtt_ca, "mqtt_cert": self.mqtt_cert, "mqtt_key": self.mqtt_key}
        named = [name for name, path in given.items() if path is not None]
        if named and not self.broker.startswith("mqtts://"):
            raise ValueError(
                f"{', '.join(named)} need a TLS broker: broker must be mqtts://HOST:PORT, "
                f"got {self.broker!r}"
            )
        if named:  # unreadable, mismatched or missing files are reported now, not at connect
            from edgefabric.mqtt import MqttTls  # noqa: PLC0415  (paho only where it is used)

            MqttTls(self.mqtt_ca, self.mqtt_cert, self.mqtt_key).context()
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
