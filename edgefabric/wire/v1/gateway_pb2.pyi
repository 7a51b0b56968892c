from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PoolInterval(_message.Message):
    __slots__ = ("model", "pool", "requests", "errors", "p50_ms", "p99_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    model: str
    pool: str
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    def __init__(self, model: _Optional[str] = ..., pool: _Optional[str] = ..., requests: _Optional[int] = ..., errors: _Optional[int] = ..., p50_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ...) -> None: ...

class GatewayStats(_message.Message):
    __slots__ = ("gateway_id", "at_ms", "interval_s", "sequence", "pools")
    GATEWAY_ID_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    gateway_id: str
    at_ms: int
    interval_s: float
    sequence: int
    pools: _containers.RepeatedCompositeFieldContainer[PoolInterval]
    def __init__(self, gateway_id: _Optional[str] = ..., at_ms: _Optional[int] = ..., interval_s: _Optional[float] = ..., sequence: _Optional[int] = ..., pools: _Optional[_Iterable[_Union[PoolInterval, _Mapping]]] = ...) -> None: ...
