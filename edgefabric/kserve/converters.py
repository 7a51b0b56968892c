"""Pure conversions between KServe v2 protobuf messages and the domain types.

No gRPC server here: everything is a function of its arguments and is tested without sockets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tritonclient.grpc import service_pb2 as pb

from edgefabric.errors import InvalidInputError, UnsupportedError
from edgefabric.inference import InferenceRequest, InferenceResponse, ParameterValue, Tensors
from edgefabric.kserve.datatypes import by_name
from edgefabric.kserve.limits import DEFAULT_LIMITS, RequestLimits
from edgefabric.kserve.tensors import decode_raw, decode_typed, element_count, encode_raw
from edgefabric.models.repository import IndexEntry
from edgefabric.models.signature import ModelSignature
from edgefabric.stats import Duration, VersionStats

__all__ = [
    "check_limits",
    "index_to_proto",
    "metadata_to_proto",
    "parameters_from_proto",
    "request_from_proto",
    "response_to_proto",
    "statistics_to_proto",
]

_SHM_KEYS = frozenset({"shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"})


def _clip(value: object) -> str:
    """``repr(value)`` for messages, cut after 64 characters: clients choose these strings."""
    text = repr(value[:65] if isinstance(value, str) else value)
    return text if len(text) <= 66 else text[:64] + "..."


def _named(kind: str, name: str) -> str:
    """``input 'x'``: a tensor or parameter name as error messages write it."""
    return f"{kind} {_clip(name)}"


def _parameter_value(name: str, param: pb.InferParameter) -> ParameterValue:
    kind = param.WhichOneof("parameter_choice")
    if kind is None:
        raise InvalidInputError(f"{_named('parameter', name)} has no value")
    value: ParameterValue = getattr(param, kind)
    return value


def parameters_from_proto(params: object) -> dict[str, ParameterValue]:
    """A protobuf ``map<string, InferParameter>`` as plain Python values."""
    items: Iterable[tuple[str, pb.InferParameter]] = params.items()  # type: ignore[attr-defined]
    return {name: _parameter_value(name, param) for name, param in items}


def _non_negative_int(params: dict[str, ParameterValue], key: str, unit: str) -> int:
    value = params.pop(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInputError(
            f"parameter {key!r}: expected a non-negative integer ({unit}), got {_clip(value)}"
        )
    return value


def check_limits(msg: pb.ModelInferRequest, limits: RequestLimits = DEFAULT_LIMITS) -> None:
    """Refuse a request whose tensor counts or shapes exceed ``limits``, before decoding it.

    Cheap (no tensor bytes are read), so it also guards requests that are forwarded whole.
    """
    for kind, count, limit, setting in (
        ("inputs", len(msg.inputs), limits.max_inputs, "max_inputs"),
        ("requested outputs", len(msg.outputs), limits.max_outputs, "max_outputs"),
    ):
        if count > limit:
            raise InvalidInputError(
                f"request has {count} {kind}, more than the {limit} this server accepts ({setting})"
            )
    bytes_elements = 0
    for tensor in msg.inputs:
        count = element_count(tensor.shape, what=_named("input", tensor.name), limits=limits)
        if tensor.datatype == "BYTES":
            bytes_elements += count
    if bytes_elements > limits.max_bytes_elements:
        raise InvalidInputError(
            f"request has {bytes_elements} BYTES elements, more than the "
            f"{limits.max_bytes_elements} this server accepts (max_bytes_elements); "
            "send fewer strings per request"
        )


def _decode_inputs(msg: pb.ModelInferRequest, limits: RequestLimits) -> Tensors:
    raw_contents = msg.raw_input_contents
    if raw_contents and len(raw_contents) != len(msg.inputs):
        raise InvalidInputError(
            f"raw_input_contents has {len(raw_contents)} entries for {len(msg.inputs)} inputs; "
            "when raw contents are used, every input needs exactly one"
        )
    inputs: Tensors = {}
    for index, tensor in enumerate(msg.inputs):
        what = _named("input", tensor.name)
        if tensor.name in inputs:
            raise InvalidInputError(f"{what} appears twice in the request")
        if _SHM_KEYS & set(tensor.parameters.keys()):
            raise UnsupportedError(f"{what}: shared memory is not supported; send tensor contents")
        datatype = by_name(tensor.datatype, what=what)
        has_typed = tensor.HasField("contents")
        if raw_contents:
            if has_typed:
                raise InvalidInputError(
                    f"{what}: has both raw_input_contents and typed contents; send only one"
                )
            inputs[tensor.name] = decode_raw(
                raw_contents[index], datatype, tensor.shape, what=what, limits=limits
            )
            continue
        if datatype.contents_field is None:
            raise InvalidInputError(
                f"{what}: {datatype.name} travels only as raw_input_contents, not typed contents"
            )
        values = getattr(tensor.contents, datatype.contents_field)
        inputs[tensor.name] = decode_typed(values, datatype, tensor.shape, what=what, limits=limits)
    return inputs


def _requested_outputs(msg: pb.ModelInferRequest) -> tuple[str, ...]:
    names: list[str] = []
    for output in msg.outputs:
        if output.name in names:
            raise InvalidInputError(f"{_named('output', output.name)} is requested twice")
        params = parameters_from_proto(output.parameters)
        if params.get("classification", 0):
            raise UnsupportedError(
                f"{_named('output', output.name)}: classification outputs are not supported"
            )
        if _SHM_KEYS & set(params):
            raise UnsupportedError(
                f"{_named('output', output.name)}: shared memory is not supported"
            )
        names.append(output.name)
    return tuple(names)


def request_from_proto(
    msg: pb.ModelInferRequest,
    *,
    now_s: float,
    time_remaining_s: float | None,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> InferenceRequest:
    """Decode and sanity-check a request (model-independent checks only).

    ``now_s`` is the current ``time.monotonic()``; ``time_remaining_s`` the client's gRPC
    deadline budget, if any. The request's deadline is the earlier of that and ``timeout``.
    Requests over ``limits`` are refused before any tensor is decoded.
    """
    if not msg.model_name:
        raise InvalidInputError("model_name is empty; name the model to run")
    check_limits(msg, limits)
    params = parameters_from_proto(msg.parameters)
    priority = _non_negative_int(params, "priority", "priority level, 0 = default")
    timeout_us = _non_negative_int(params, "timeout", "microseconds")
    deadlines = []
    if time_remaining_s is not None:
        deadlines.append(now_s + time_remaining_s)
    if timeout_us:
        deadlines.append(now_s + timeout_us / 1e6)
    return InferenceRequest(
        model_name=msg.model_name,
        model_version=msg.model_version,
        id=msg.id,
        inputs=_decode_inputs(msg, limits),
        requested_outputs=_requested_outputs(msg),
        parameters=params,
        priority=priority,
        timeout_us=timeout_us,
        deadline_s=min(deadlines) if deadlines else None,
    )


def response_to_proto(response: InferenceResponse) -> pb.ModelInferResponse:
    """Encode outputs as raw contents; ``outputs`` and ``raw_output_contents`` stay aligned."""
    msg = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id
    )
    for name, array in response.outputs.items():
        datatype, raw = encode_raw(array)
        msg.outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        msg.raw_output_contents.append(raw)
    return msg


def metadata_to_proto(
    signature: ModelSignature, versions: Sequence[int], platform: str
) -> pb.ModelMetadataResponse:
    """Model metadata: versions, platform and tensor signatures as a client sees them."""
    msg = pb.ModelMetadataResponse(
        name=signature.model_name, versions=[str(v) for v in versions], platform=platform
    )
    for spec in signature.inputs:
        msg.inputs.add(
            name=spec.name, datatype=spec.datatype.name, shape=signature.full_shape(spec)
        )
    for spec in signature.outputs:
        msg.outputs.add(
            name=spec.name, datatype=spec.datatype.name, shape=signature.full_shape(spec)
        )
    return msg


def _duration(target: pb.StatisticDuration, source: Duration) -> None:
    target.count = source.count
    target.ns = source.ns


def statistics_to_proto(name: str, version: int, stats: VersionStats) -> pb.ModelStatistics:
    """One version's counters as a KServe v2 ``ModelStatistics`` entry."""
    msg = pb.ModelStatistics(
        name=name,
        version=str(version),
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
    )
    infer = msg.inference_stats
    _duration(infer.success, stats.success)
    _duration(infer.fail, stats.fail)
    _duration(infer.queue, stats.queue)
    _duration(infer.compute_input, stats.compute_input)
    _duration(infer.compute_infer, stats.compute_infer)
    _duration(infer.compute_output, stats.compute_output)
    for batch_size, batch in sorted(stats.batches.items()):
        entry = msg.batch_stats.add(batch_size=batch_size)
        _duration(entry.compute_input, batch.compute_input)
        _duration(entry.compute_infer, batch.compute_infer)
        _duration(entry.compute_output, batch.compute_output)
    return msg


def index_to_proto(entries: Sequence[IndexEntry]) -> pb.RepositoryIndexResponse:
    """The repository index as KServe v2 reports it."""
    msg = pb.RepositoryIndexResponse()
    for entry in entries:
        msg.models.add(
            name=entry.name, version=entry.version, state=entry.state.value, reason=entry.reason
        )
    return msg
