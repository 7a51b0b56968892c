"""Gateway process settings: environment (``EDGEFABRIC_GATEWAY_*``), then command-line flags."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from edgefabric import topics
from edgefabric.desired import load_public_key
from edgefabric.errors import InvalidInputError
from edgefabric.kserve.limits import RequestLimits
from edgefabric.mqtt import BrokerAddress, MqttTls
from edgefabric.security.listener_settings import ListenerTlsSettings
from edgefabric.security.tls import check_exposure, is_loopback

__all__ = ["GatewaySettings"]


class GatewaySettings(ListenerTlsSettings):
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
    admission_max_in_flight: int = Field(
        0,
        ge=0,
        description="ModelInfer calls in progress beyond which new ones are refused at once "
        "with RESOURCE_EXHAUSTED and a retry-after-ms hint, before decoding; 0: no cap "
        "(deadlines are still checked).",
    )
    admission_min_in_flight: int = Field(
        4,
        ge=1,
        description="ModelInfer calls in progress below which every call is admitted; from "
        "here on one whose deadline is shorter than the wait predicted from the calls in "
        "flight and the measured completion rate is refused with DEADLINE_EXCEEDED.",
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
    routes_from_broker: bool = Field(
        False,
        description="Also apply the store's route table (`edgefabric route set`), signed by the "
        "controller key and retained on ef/v1/routes at the fleet broker (report_broker, else "
        "the first mqtt[s]:// pool's broker, with the mqtt_* TLS files); a store route "
        "replaces a --route entry for the same model.",
    )
    routes_key: Path | None = Field(
        None,
        description="The controller's public key (PEM, the store's controller.pub) that store "
        "route tables must be signed with; default: controller.pub in home / $EDGEFABRIC_HOME.",
    )
    report_broker: str = Field(
        "",
        description="MQTT broker (mqtt://HOST:PORT or mqtts://HOST:PORT, TLS files as for the "
        "pools) to publish routing statistics per model and pool to, on "
        "ef/v1/gw/{gateway_id}/stats, for the store's dashboard; empty: the broker of the "
        "first mqtt[s]:// pool, and none without one.",
    )
    report_interval_s: float = Field(
        10.0, ge=0, description="Seconds between statistics reports; 0 turns reporting off."
    )
    gateway_id: str = Field(
        "",
        description="This gateway's name in its statistics topic; empty: the CN of --mqtt-cert "
        "when the report broker is mqtts:// (the name the broker ACL grants), else the host name.",
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

    def fleet_broker(self) -> str | None:
        """The store's broker as this gateway knows it: ``report_broker``, else the first edge
        pool's; ``None`` when there is neither."""
        if self.report_broker:
            return self.report_broker
        targets = (item.partition("=")[2] for item in self.pools)
        return next((t for t in targets if t.startswith(("mqtt://", "mqtts://"))), None)

    def report_target(self) -> str | None:
        """The broker statistics go to (:meth:`fleet_broker`); ``None`` when there is none or
        ``report_interval_s`` is 0."""
        if self.report_interval_s == 0:
            return None
        return self.fleet_broker()

    def routes_key_path(self) -> Path | None:
        """``routes_key``, else ``controller.pub`` in ``home`` or $EDGEFABRIC_HOME."""
        if self.routes_key is not None:
            return self.routes_key
        env_home = os.environ.get("EDGEFABRIC_HOME")
        home = self.home or (Path(env_home) if env_home else None)
        return None if home is None else home / "controller.pub"

    def report_gateway_id(self) -> str:
        """``gateway_id``, else the client certificate's CN (mqtts:// report broker), else the
        host name."""
        if self.gateway_id:
            return self.gateway_id
        target = self.report_target() or ""
        if target.startswith("mqtts://") and self.mqtt_cert is not None:
            from gateway.pools.edge import certificate_name  # noqa: PLC0415  (loaded when used)

            return certificate_name(self.mqtt_cert)
        return socket.gethostname() or "gateway"

    def mqtt_tls(self) -> MqttTls | None:
        """TLS for the ``mqtts://`` pools (``None``: none of the files given)."""
        if self.mqtt_ca is None and self.mqtt_cert is None and self.mqtt_key is None:
            return None
        return MqttTls(self.mqtt_ca, self.mqtt_cert, self.mqtt_key)

    @model_validator(mode="after")
    def _exposure_is_chosen(self) -> GatewaySettings:
        self._check_mqtt_tls()
        self._check_reporting()
        self._check_route_feed()
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
        if not any(
            item.partition("=")[2].startswith("mqtts://") for item in self.pools
        ) and not self.report_broker.startswith("mqtts://"):
            raise ValueError(
                f"{'/'.join(named)} are for mqtts:// pools and an mqtts:// --report-broker, and "
                f"there is neither (pools: {', '.join(self.pools) or 'none'}); give --pool "
                "NAME=mqtts://HOST:PORT or --report-broker mqtts://HOST:PORT"
            )
        tls.context()  # unreadable, missing or mismatched files are reported now
        if tls.cert_file is not None:
            from gateway.pools.edge import certificate_name  # noqa: PLC0415  (loaded when used)

            certificate_name(tls.cert_file)

    def _check_reporting(self) -> None:
        target = self.report_target()
        if target is None:
            return
        BrokerAddress.parse(target)  # ValueError says what is wrong with the address
        topics.gateway_stats(self.report_gateway_id())  # one safe topic level
        if self.gateway_id and target.startswith("mqtts://") and self.mqtt_cert is not None:
            from gateway.pools.edge import certificate_name  # noqa: PLC0415  (loaded when used)

            name = certificate_name(self.mqtt_cert)
            if name != self.gateway_id:
                raise ValueError(
                    f"gateway_id {self.gateway_id!r} differs from the CN {name!r} of "
                    f"{self.mqtt_cert}: the broker ACL lets this gateway publish statistics "
                    f"only as {name!r}; leave --gateway-id out or set it to {name!r}"
                )

    def _check_route_feed(self) -> None:
        if not self.routes_from_broker:
            if self.routes_key is not None:
                raise ValueError("--routes-key is the key of --routes-from-broker; pass both")
            return
        if self.fleet_broker() is None:
            raise ValueError(
                "--routes-from-broker reads the store's route table from the fleet broker, and "
                "there is none: give --report-broker mqtt[s]://HOST:PORT or an edge pool "
                "--pool NAME=mqtt[s]://HOST:PORT"
            )
        path = self.routes_key_path()
        if path is None:
            raise ValueError(
                "--routes-from-broker accepts only tables signed by the store's controller key: "
                "pass --routes-key FILE (the store's controller.pub) or --home STORE_HOME"
            )
        try:
            load_public_key(path.read_bytes())
        except OSError as exc:
            raise ValueError(
                f"--routes-key {path}: cannot read the controller's public key ({exc.strerror}); "
                "copy controller.pub from the store's home (`edgefabric keys init` writes it)"
            ) from None
        except InvalidInputError as exc:
            raise ValueError(f"--routes-key {path}: {exc}") from None

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
