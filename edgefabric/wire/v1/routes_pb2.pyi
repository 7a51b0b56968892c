from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RouteEntry(_message.Message):
    __slots__ = ("model", "spec")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    model: str
    spec: str
    def __init__(self, model: _Optional[str] = ..., spec: _Optional[str] = ...) -> None: ...

class RouteTable(_message.Message):
    __slots__ = ("sequence", "issued_at_ms", "routes")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    issued_at_ms: int
    routes: _containers.RepeatedCompositeFieldContainer[RouteEntry]
    def __init__(self, sequence: _Optional[int] = ..., issued_at_ms: _Optional[int] = ..., routes: _Optional[_Iterable[_Union[RouteEntry, _Mapping]]] = ...) -> None: ...

class SignedRouteTable(_message.Message):
    __slots__ = ("table", "key_id", "signature")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    table: bytes
    key_id: str
    signature: bytes
    def __init__(self, table: _Optional[bytes] = ..., key_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...
