"""Gateway process settings: environment (``EDGEFABRIC_GATEWAY_*``), then command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefabric.kserve.limits import RequestLimits
from edgefabric.mqtt import BrokerAddress, MqttTls
from edgefabric.security.tls import ServerTls, check_exposure, is_loopback

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
    otlp_endpoint: str = Field(
        "",
        description="OpenTelemetry collector (OTLP/gRPC, http://HOST:4317) to send request "
        "traces to; empty: $OTEL_EXPORTER_OTLP_ENDPOINT, and when that is unset tracing is off.",
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
    max_inputs: int = Field(256, ge=1, description="Input tensors one request may carry.")
    max_outputs: int = Field(256, ge=1, description="Outputs one request may ask for.")
    max_rank: int = Field(32, ge=1, le=64, description="Dimensions of one tensor's shape.")
    max_tensor_elements: int = Field(
        1 << 28,
        ge=1,
        description="Elements of one tensor (zero dimensions do not hide the others).",
    )
    max_bytes_elements: int = Field(
        1 << 20,
        ge=1,
        description="BYTES elements in one request, all inputs together; each becomes a "
        "Python object, so this bounds what a message of empty strings can cost.",
    )
    max_bytes_element_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Length of one BYTES element, in bytes."
    )
    max_stream_in_flight: int = Field(
        128,
        ge=1,
        description="Requests of one ModelStreamInfer stream in progress or waiting to be sent; "
        "past it the gateway reads no more from that stream until answers are sent.",
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
        description="Pools as NAME=grpc://HOST:PORT (a remote KServe v2 server: Triton, MLServer, "
        "another gateway) or NAME=mqtt://HOST:PORT / NAME=mqtts://HOST:PORT (edge agents behind "
        "that MQTT broker, reached by relay); their models are served next to the local ones.",
    )
    mqtt_ca: Path | None = Field(
        None,
        description="CA certificate (PEM) of the mqtts:// pools' broker (`edgefabric fleet "
        "enroll` writes it as ca.pem); default: the system's CAs.",
    )
    mqtt_cert: Path | None = Field(
        None,
        description="The gateway's MQTT client certificate (PEM) for mqtts:// pools, from "
        "`edgefabric fleet enroll NAME --role gateway`; its CN names the answer topics.",
    )
    mqtt_key: Path | None = Field(
        None, description="The MQTT client certificate's private key (PEM, keep it mode 0600)."
    )
    routes: tuple[str, ...] = Field(
        (), description="Route table entries (see gateway/routing/table.py for the syntax)."
    )

    tls_cert: Path | None = Field(
        None, description="Server certificate chain (PEM); with tls_key, the API speaks TLS."
    )
    tls_key: Path | None = Field(None, description="The server certificate's private key (PEM).")
    tls_client_ca: Path | None = Field(
        None, description="CA (PEM) whose certificates clients must present: mutual TLS."
    )
    tls_client_auth: Literal["required", "optional"] = Field(
        "required",
        description="With tls_client_ca: 'required' refuses clients without a certificate; "
        "'optional' checks one only when a client presents it.",
    )
    insecure: bool = Field(
        False, description="Allow plaintext gRPC on an address other machines can reach."
    )
    auth: Literal["none", "required"] = Field(
        "none",
        description="'required': every call but health/liveness needs a bearer token from the "
        "token store under home; 'none': anyone may call (loopback only unless allow_anonymous).",
    )
    allow_anonymous: bool = Field(
        False, description="Allow auth 'none' on an address other machines can reach."
    )
    home: Path | None = Field(
        None,
        description="EDGEFABRIC_HOME holding tokens.sqlite3 and the audit log that admin RPCs "
        "join; default $EDGEFABRIC_HOME, else ~/.edgefabric when auth is required.",
    )
    tenant_rate_per_s: float = Field(
        0.0, ge=0, description="Requests/s for tenants without limits in the token store; 0: none."
    )
    tenant_burst: int = Field(
        0, ge=0, description="Token-bucket size for those tenants (at least 1 when rated)."
    )
    tenant_max_concurrent: int = Field(
        0, ge=0, description="Inference calls in progress per such tenant; 0: no quota."
    )
    max_deadline_s: float = Field(
        300.0,
        ge=0,
        description="Longest deadline honoured: a request with a longer one, or none, is given "
        "this one; 0: no cap.",
    )

    def mqtt_tls(self) -> MqttTls | None:
        """TLS for the ``mqtts://`` pools (``None``: none of the files given)."""
        if self.mqtt_ca is None and self.mqtt_cert is None and self.mqtt_key is None:
            return None
        return MqttTls(self.mqtt_ca, self.mqtt_cert, self.mqtt_key)

    def server_tls(self) -> ServerTls | None:
        """The TLS configuration, read from the PEM files (``None``: plaintext)."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        return ServerTls.from_files(
            self.tls_cert,
            self.tls_key,
            self.tls_client_ca,
            require_client_cert=self.tls_client_auth == "required" if self.tls_client_ca else None,
        )

    @model_validator(mode="after")
    def _exposure_is_chosen(self) -> GatewaySettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key (--tls-cert and --tls-key)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mutual TLS) needs tls_cert and tls_key too")
        self.server_tls()  # refuses unreadable or mismatched PEM files now
        self._check_mqtt_tls()
        check_exposure(self.grpc_address, tls=self.tls_cert is not None, insecure=self.insecure)
        if self.auth == "none" and not self.allow_anonymous and not is_loopback(self.grpc_address):
            raise ValueError(
                f"refusing to serve without authentication on {self.grpc_address!r}, which "
                "other machines can reach: pass --auth required (tokens from "
                "`edgefabric token create`), bind a loopback address, or pass "
                "--allow-anonymous"
            )
        return self

    def _check_mqtt_tls(self) -> None:
        tls = self.mqtt_tls()
        if tls is None:
            return
        named = [f"--{n.replace('_', '-')}" for n in ("mqtt_ca", "mqtt_cert", "mqtt_key")]
        if not any(item.partition("=")[2].startswith("mqtts://") for item in self.pools):
            raise ValueError(
                f"{'/'.join(named)} are for mqtts:// pools, and no pool is one (pools: "
                f"{', '.join(self.pools) or 'none'}); give --pool NAME=mqtts://HOST:PORT"
            )
        tls.context()  # unreadable, missing or mismatched files are reported now
        if tls.cert_file is not None:
            from gateway.pools.edge import certificate_name  # noqa: PLC0415  (loaded when used)

            certificate_name(tls.cert_file)

    def request_limits(self) -> RequestLimits:
        """The decoding limits these settings set for every inference request."""
        return RequestLimits(
            max_inputs=self.max_inputs,
            max_outputs=self.max_outputs,
            max_rank=self.max_rank,
            max_tensor_elements=self.max_tensor_elements,
            max_bytes_elements=self.max_bytes_elements,
            max_bytes_element_bytes=self.max_bytes_element_bytes,
            max_stream_in_flight=self.max_stream_in_flight,
        )

    @field_validator("pools")
    @classmethod
    def _pools_are_named_targets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            name, sep, target = item.partition("=")
            scheme_ok = target.startswith(("grpc://", "mqtt://", "mqtts://"))
            if not sep or not name or not scheme_ok or name == "local":
                raise ValueError(
                    f"pool {item!r}: expected NAME=grpc://HOST:PORT, NAME=mqtt://HOST:PORT or "
                    "NAME=mqtts://HOST:PORT (NAME other than 'local')"
                )
            if target.startswith(("mqtt://", "mqtts://")):
                BrokerAddress.parse(target)  # ValueError says what is wrong with the address
        return value

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"model repository {value} is not a directory")
        return value
