from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceStatus(_message.Message):
    __slots__ = ("device_id", "online", "at_ms", "agent_version", "labels", "grpc_endpoint")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    ONLINE_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    GRPC_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    online: bool
    at_ms: int
    agent_version: str
    labels: _containers.ScalarMap[str, str]
    grpc_endpoint: str
    def __init__(self, device_id: _Optional[str] = ..., online: _Optional[bool] = ..., at_ms: _Optional[int] = ..., agent_version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., grpc_endpoint: _Optional[str] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DesiredState(_message.Message):
    __slots__ = ("device_id", "sequence", "models", "issued_at_ms", "rollout_id")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    sequence: int
    models: _containers.RepeatedCompositeFieldContainer[ModelRef]
    issued_at_ms: int
    rollout_id: str
    def __init__(self, device_id: _Optional[str] = ..., sequence: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelRef, _Mapping]]] = ..., issued_at_ms: _Optional[int] = ..., rollout_id: _Optional[str] = ...) -> None: ...

class SignedDesiredState(_message.Message):
    __slots__ = ("state", "key_id", "signature")
    STATE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    state: bytes
    key_id: str
    signature: bytes
    def __init__(self, state: _Optional[bytes] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SlotReport(_message.Message):
    __slots__ = ("model", "version", "state", "reason", "active")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    state: str
    reason: str
    active: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., active: _Optional[bool] = ...) -> None: ...

class ModelHealth(_message.Message):
    __slots__ = ("model", "version", "requests", "errors", "p50_ms", "p99_ms", "self_test_passed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    SELF_TEST_PASSED_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    self_test_passed: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., self_test_passed: _Optional[bool] = ...) -> None: ...

class Health(_message.Message):
    __slots__ = ("device_id", "at_ms", "slots", "models", "execution_provider", "metadata_age_s", "cpu_percent", "rss_bytes", "applied_sequence", "outbox_pending")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    METADATA_AGE_S_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    OUTBOX_PENDING_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    at_ms: int
    slots: _containers.RepeatedCompositeFieldContainer[SlotReport]
    models: _containers.RepeatedCompositeFieldContainer[ModelHealth]
    execution_provider: str
    metadata_age_s: float
    cpu_percent: float
    rss_bytes: int
    applied_sequence: int
    outbox_pending: int
    def __init__(self, device_id: _Optional[str] = ..., at_ms: _Optional[int] = ..., slots: _Optional[_Iterable[_Union[SlotReport, _Mapping]]] = ..., models: _Optional[_Iterable[_Union[ModelHealth, _Mapping]]] = ..., execution_provider: _Optional[str] = ..., metadata_age_s: _Optional[float] = ..., cpu_percent: _Optional[float] = ..., rss_bytes: _Optional[int] = ..., applied_sequence: _Optional[int] = ..., outbox_pending: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("device_id", "at_ms", "kind", "model", "version", "message", "sequence", "event_id")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Event.Kind]
        DESIRED_RECEIVED: _ClassVar[Event.Kind]
        DOWNLOAD_STARTED: _ClassVar[Event.Kind]
        DOWNLOAD_RESUMED: _ClassVar[Event.Kind]
        VERIFIED: _ClassVar[Event.Kind]
        SELF_TEST_PASSED: _ClassVar[Event.Kind]
        SWITCHED: _ClassVar[Event.Kind]
        INSTALL_FAILED: _ClassVar[Event.Kind]
        ROLLED_BACK: _ClassVar[Event.Kind]
        REJECTED: _ClassVar[Event.Kind]
        RECONCILED: _ClassVar[Event.Kind]
    KIND_UNSPECIFIED: Event.Kind
    DESIRED_RECEIVED: Event.Kind
    DOWNLOAD_STARTED: Event.Kind
    DOWNLOAD_RESUMED: Event.Kind
    VERIFIED: Event.Kind
    SELF_TEST_PASSED: Event.Kind
    SWITCHED: Event.Kind
    INSTALL_FAILED: Event.Kind
    ROLLED_BACK: Event.Kind
    REJECTED: Event.Kind
    RECONCILED: Event.Kind
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    at_ms: int
    kind: Event.Kind
    model: str
    version: int
    message: str
    sequence: int
    event_id: int
    def __init__(self, device_id: _Optional[str] = ..., at_ms: _Optional[int] = ..., kind: _Optional[_Union[Event.Kind, str]] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., message: _Optional[str] = ..., sequence: _Optional[int] = ..., event_id: _Optional[int] = ...) -> None: ...
