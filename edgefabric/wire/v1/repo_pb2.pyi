from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RepoRequest(_message.Message):
    __slots__ = ("path", "offset", "max_length")
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    path: str
    offset: int
    max_length: int
    def __init__(self, path: _Optional[str] = ..., offset: _Optional[int] = ..., max_length: _Optional[int] = ...) -> None: ...

class RepoResponse(_message.Message):
    __slots__ = ("status", "data", "offset", "total_length", "message")
    class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATUS_UNSPECIFIED: _ClassVar[RepoResponse.Status]
        OK: _ClassVar[RepoResponse.Status]
        ABSENT: _ClassVar[RepoResponse.Status]
        BAD_REQUEST: _ClassVar[RepoResponse.Status]
        ERROR: _ClassVar[RepoResponse.Status]
    STATUS_UNSPECIFIED: RepoResponse.Status
    OK: RepoResponse.Status
    ABSENT: RepoResponse.Status
    BAD_REQUEST: RepoResponse.Status
    ERROR: RepoResponse.Status
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    status: RepoResponse.Status
    data: bytes
    offset: int
    total_length: int
    message: str
    def __init__(self, status: _Optional[_Union[RepoResponse.Status, str]] = ..., data: _Optional[bytes] = ..., offset: _Optional[int] = ..., total_length: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...
